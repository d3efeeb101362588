#!/usr/bin/env bash
# What a napari-hub user gets: build the sdist and wheel, check them as the package index would,
# install the wheel with its dependencies into a fresh virtual environment outside this checkout,
# and use it there: import, npe2 contributions, every sample, the widget through the Plugins-menu
# route (under Xvfb), and `g3dvit demo`. Not part of the fast test suite (it downloads the
# dependencies, about 5 GB with torch).
#
#   bash scripts/check_install.sh            (needs scripts/setup.sh's .venv for the build tools)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d /tmp/g3dvit-install-XXXXXX)
trap 'rm -rf "$work"' EXIT
started=$(date +%s)
py=.venv/bin/python

echo "== build: sdist, a wheel from the sdist, and a wheel straight from the source tree"
$py -m build --sdist --wheel --outdir "$work/dist" . >"$work/build.log" 2>&1 || { tail -30 "$work/build.log"; exit 1; }
$py -m build --wheel --outdir "$work/direct" . >>"$work/build.log" 2>&1 || { tail -30 "$work/build.log"; exit 1; }
sdist=$(ls "$work"/dist/*.tar.gz)
wheel=$(ls "$work"/dist/*.whl)
ls -l "$sdist" "$wheel" | awk '{print $5, $9}'

echo "== the wheel built from the sdist equals the direct build (names and contents)"
$py - "$wheel" "$work"/direct/*.whl <<'PY'
import hashlib, sys, zipfile
def contents(path):
    with zipfile.ZipFile(path) as z:
        return {n: hashlib.sha256(z.read(n)).hexdigest() for n in z.namelist() if not n.endswith("RECORD")}
a, b = (contents(p) for p in sys.argv[1:3])
if a != b:
    print("only from the sdist:", sorted(set(a) - set(b)), "only direct:", sorted(set(b) - set(a)))
    print("different:", sorted(n for n in set(a) & set(b) if a[n] != b[n]))
    sys.exit(1)
print(f"{len(a)} files, identical")
PY

echo "== twine check (the README renders on the package index)"
$py -m twine check "$sdist" "$wheel"

echo "== a fresh environment outside the checkout, the wheel and its dependencies from PyPI"
python3 -m venv "$work/venv"
env -u PIP_FIND_LINKS "$work/venv/bin/python" -m pip install -q --disable-pip-version-check "$wheel[pyqt6]" \
  2>&1 | grep -v "is ignored: it is neither" || true
"$work/venv/bin/python" -m pip show napari-g3dvit | sed -n '1,3p'

echo "== used there as a hub user would"
cd "$work"
xvfb-run -a "$work/venv/bin/python" - "$root" <<'PY'
import sys, warnings
from pathlib import Path
warnings.simplefilter("ignore")
root = Path(sys.argv[1])
import napari_g3dvit
where = Path(napari_g3dvit.__file__).resolve()
assert root not in where.parents, f"imported from the checkout: {where}"
print(f"napari_g3dvit {napari_g3dvit.__version__} from {where.parent}")

import npe2
pm = npe2.PluginManager.instance()
pm.discover()
manifest = pm.get_manifest("napari-g3dvit")
c = manifest.contributions
print("readers:", [r.command for r in c.readers])
print("writers:", [w.command for w in c.writers])
print("widgets:", [w.display_name for w in c.widgets])
print("samples:", [s.key for s in c.sample_data])
assert c.readers and len(c.writers) == 2 and c.widgets and len(c.sample_data) >= 3
notice = where.parent / "sample_models" / "NOTICE_MNI152.txt"
assert "McConnell" in notice.read_text(), "the data notice is missing"
print("data notice:", notice)

import napari
viewer = napari.Viewer(show=True)
for sample in c.sample_data:
    layers = viewer.open_sample("napari-g3dvit", sample.key)
    print(f"sample {sample.key}: {[type(l).__name__ + ' ' + l.name for l in layers]}")
_, widget = viewer.window.add_plugin_dock_widget("napari-g3dvit", "Explain 3D ViT")
image = next(l for l in viewer.layers if "g3dvit_model" in l.metadata)
widget.volume.value = image
widget.wait()
assert widget.model is not None, widget.last_error
widget.run()
widget.wait()
assert not widget.last_error, widget.last_error
print(f"widget (Plugins menu route): {widget.result.value}; layer '{widget.last_layer.name}'")
viewer.close()
PY
"$work/venv/bin/g3dvit" demo --out "$work/demo" | tail -2
echo "== clean install checked in $(( $(date +%s) - started )) s"
