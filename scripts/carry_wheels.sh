#!/usr/bin/env bash
# Python packages for a machine without network that takes at most 64 MiB of files per call (the lent
# GPU): downloaded here, unpacked into one site folder (extension modules of other Pythons dropped),
# compressed with xz and split into numbered parts of <= 60 MB, carried one part per call (each part is
# an ignored file, and ignored files stay on the warm machine between calls), then joined, checked
# against a SHA-256 manifest and unpacked there into a folder for PYTHONPATH, without pip or an index.
#
#   bash scripts/carry_wheels.sh pack [--python 3.12] [--skip NAME]... PACKAGE...   # here: .carry/part-NN
#   bash scripts/carry_wheels.sh parts                          # the carry list, one call per part
#   bash scripts/carry_wheels.sh install [DIR]                  # there, once every part is carried
#   export PYTHONPATH=DIR:$PYTHONPATH                           # DIR defaults to /tmp/carried
#
# --skip leaves out a distribution the target already has (its numpy, say) or one the use does not
# load (a codec's optional library). DALI 2.4 for the H200 lease (python 3.12): 3 parts, not the 5
# its wheels take (xz and one Python's extension modules instead of nine):
#   bash scripts/carry_wheels.sh pack --python 3.12 --skip numpy --skip packaging --skip pyyaml \
#       --skip six --skip typing-extensions --skip wheel --skip nvidia-libnvcomp-cu13 'nvidia-dali-cuda130==2.4.0'
set -euo pipefail
DIR=.carry
PART_BYTES=60000000  # + the working tree (~3.5 MB) stays under the 64 MiB a call carries; carry nothing else

die() { echo "carry_wheels: $*" >&2; exit 2; }

case "${1:-}" in
pack)
    shift
    py=3.12 skip=()
    while [ $# -gt 0 ]; do
        case "$1" in
        --python) py="${2:?--python needs a version}"; shift 2 ;;
        --skip) skip+=("$(echo "${2:?--skip needs a name}" | tr 'A-Z-.' 'a-z__')"); shift 2 ;;
        *) break ;;
        esac
    done
    [ $# -gt 0 ] || die "pack: name the packages to carry (e.g. 'nvidia-dali-cuda130==2.4.0')"
    pip=$(command -v .venv/bin/pip || command -v pip3) || die "no pip here"
    # only our own files: .carry/NAME/ holds carry_data.py's packs
    rm -rf "$DIR/wheels" "$DIR/site" "$DIR"/part-* "$DIR/MANIFEST" && mkdir -p "$DIR/wheels" "$DIR/site"
    "$pip" download -q -d "$DIR/wheels" --only-binary=:all: --python-version "$py" \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 "$@"
    tag="cpython-${py/./}"
    for whl in "$DIR"/wheels/*.whl; do
        name=$(basename "$whl" | cut -d- -f1 | tr 'A-Z-.' 'a-z__')
        if [[ " ${skip[*]} " == *" $name "* ]]; then echo "skipped: $(basename "$whl")"; continue; fi
        unzip -q -o "$whl" -d "$DIR/site"
    done
    # extension modules built for other Pythons (a wheel tagged py3-none may hold one per version)
    find "$DIR/site" -name '*.cpython-3*.so' ! -name "*.$tag-*" -delete
    tar -C "$DIR/site" -cf - . | xz -T0 -6 >"$DIR/site.tar.xz"
    rm -rf "$DIR/wheels" "$DIR/site"
    split -b "$PART_BYTES" -d -a 2 "$DIR/site.tar.xz" "$DIR/part-"
    (cd "$DIR" && sha256sum site.tar.xz part-* >MANIFEST)
    rm "$DIR/site.tar.xz"
    ls -l "$DIR"
    ;;
parts)
    [ -f "$DIR/MANIFEST" ] || die "no $DIR/MANIFEST: run 'pack' first"
    for p in "$DIR"/part-*; do echo "[\"$p\", \"$DIR/MANIFEST\"]"; done
    ;;
install)
    target="${2:-/tmp/carried}"
    [ -f "$DIR/MANIFEST" ] || die "no $DIR/MANIFEST here: carry it with the parts"
    (cd "$DIR" && grep ' part-' MANIFEST | sha256sum -c --quiet) || die "a part is missing or damaged"
    cat "$DIR"/part-* >"$DIR/site.tar.xz"
    (cd "$DIR" && grep ' site.tar.xz$' MANIFEST | sha256sum -c --quiet) || die "the joined archive differs"
    mkdir -p "$target"
    xz -dc "$DIR/site.tar.xz" | tar -C "$target" --no-same-owner -xf -
    rm "$DIR/site.tar.xz"
    echo "carry_wheels: unpacked into $target (export PYTHONPATH=$target:\$PYTHONPATH)"
    ;;
*)
    die "usage: pack [--python X.Y] [--skip NAME]... PACKAGE... | parts | install [DIR]"
    ;;
esac
