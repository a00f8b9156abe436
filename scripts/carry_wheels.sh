#!/usr/bin/env bash
# Wheels for a machine without network that takes at most 64 MiB of files per call (the lent GPU):
# packed here into numbered parts of <= 58 MB, carried one part per call (each part is an ignored
# file, and ignored files stay on the warm machine between calls), then joined, checked and
# installed there without an index.
#
#   bash scripts/carry_wheels.sh pack [--python 3.12] PACKAGE...   # here, with PyPI: .carry/part-NN
#   bash scripts/carry_wheels.sh parts                            # the carry list, one call per part
#   bash scripts/carry_wheels.sh install [PYTHON]                 # there, once every part is carried
#
# Example (DALI for the H200 lease, whose python is 3.12):
#   bash scripts/carry_wheels.sh pack --python 3.12 'nvidia-dali-cuda130>=1.50'
#   then one device call per part: carry [".carry/part-00", ".carry/MANIFEST"], command "ls .carry", ...
#   and last: bash scripts/carry_wheels.sh install /opt/torch/.venv/bin/python && bash benchmarks/gpu_data.sh
set -euo pipefail
DIR=.carry
PART_BYTES=58000000  # + the working tree (~3 MB) stays under the 64 MiB a call carries; carry nothing else

die() { echo "carry_wheels: $*" >&2; exit 2; }

case "${1:-}" in
pack)
    shift
    py=3.12
    if [ "${1:-}" = "--python" ]; then py="${2:?--python needs a version}"; shift 2; fi
    [ $# -gt 0 ] || die "pack: name the packages to carry (e.g. 'nvidia-dali-cuda130>=1.50')"
    pip=$(command -v .venv/bin/pip || command -v pip3) || die "no pip here"
    rm -rf "$DIR" && mkdir -p "$DIR/wheels"
    "$pip" download -q -d "$DIR/wheels" --only-binary=:all: --python-version "$py" \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 "$@"
    tar -C "$DIR" -cf "$DIR/wheels.tar" wheels
    rm -rf "$DIR/wheels"
    split -b "$PART_BYTES" -d -a 2 "$DIR/wheels.tar" "$DIR/part-"
    (cd "$DIR" && sha256sum wheels.tar part-* >MANIFEST)
    rm "$DIR/wheels.tar"
    ls -l "$DIR"
    ;;
parts)
    [ -f "$DIR/MANIFEST" ] || die "no $DIR/MANIFEST: run 'pack' first"
    for p in "$DIR"/part-*; do echo "[\"$p\", \"$DIR/MANIFEST\"]"; done
    ;;
install)
    python="${2:-python3}"
    [ -f "$DIR/MANIFEST" ] || die "no $DIR/MANIFEST here: carry it with the parts"
    (cd "$DIR" && grep ' part-' MANIFEST | sha256sum -c --quiet) || die "a part is missing or damaged"
    cat "$DIR"/part-* >"$DIR/wheels.tar"
    (cd "$DIR" && grep ' wheels.tar$' MANIFEST | sha256sum -c --quiet) || die "the joined archive differs"
    tar -C "$DIR" -xf "$DIR/wheels.tar"
    "$python" -m pip install -q --no-index --find-links "$DIR/wheels" "$DIR"/wheels/*.whl
    echo "carry_wheels: installed $(ls "$DIR"/wheels | wc -l) wheels"
    ;;
*)
    die "usage: pack [--python X.Y] PACKAGE... | parts | install [PYTHON]"
    ;;
esac
