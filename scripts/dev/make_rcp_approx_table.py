#!/usr/bin/env python3
"""Packs the measured rcp.approx.ftz.f32 table into src/kernels/cpu/data/rcp_approx_sm90.bin.

Where the input comes from: scripts/dev/rcp_approx_probe.cu, built with
  nvcc -O2 -gencode=arch=compute_90a,code=sm_90a scripts/dev/rcp_approx_probe.cu -o probe
and run on an NVIDIA H200 (sm_90) as `./probe OUT_DIR`, writes OUT_DIR/rcp_delta.bin: 2^23 int8
values, entry m = bits(rcp.approx.ftz.f32(x)) - bits(1.0f / x correctly rounded) for x the float
with exponent bits 127 and mantissa m (x in [1, 2)). On the H200 every entry is -1, 0 or +1
(374 723 / 7 280 086 / 733 799).

Output: 2 bits per mantissa, four mantissas per byte, mantissa m in bits 2*(m % 4) .. 2*(m % 4) + 1
of byte m / 4; 0 -> 0, 1 -> +1, 2 -> -1 (3 is never written). 2 MiB. kbit embeds the file in the
library (src/kernels/cpu/gpu_approx_math.cc) and checks its SHA-256 when CMake configures
(src/kernels/cpu/CMakeLists.txt) and its contents in gpu_approx_math_test.cc; update both after
regenerating.

Usage: scripts/dev/make_rcp_approx_table.py RCP_DELTA_BIN [OUTPUT]
"""
import hashlib
import pathlib
import sys

MANTISSAS = 1 << 23
CODE_OF_DELTA = {0: 0, 1: 1, -1: 2}


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    source = pathlib.Path(sys.argv[1])
    output = pathlib.Path(sys.argv[2]) if len(sys.argv) == 3 else (
        pathlib.Path(__file__).resolve().parents[2] / "src/kernels/cpu/data/rcp_approx_sm90.bin")
    deltas = source.read_bytes()
    if len(deltas) != MANTISSAS:
        print(f"{source}: {len(deltas)} bytes, expected {MANTISSAS}", file=sys.stderr)
        return 1
    counts = {-1: 0, 0: 0, 1: 0}
    packed = bytearray(MANTISSAS // 4)
    for m, byte in enumerate(deltas):
        delta = byte - 256 if byte >= 128 else byte
        if delta not in CODE_OF_DELTA:
            print(f"{source}: mantissa {m} has delta {delta}; only -1, 0, +1 fit 2 bits",
                  file=sys.stderr)
            return 1
        counts[delta] += 1
        packed[m >> 2] |= CODE_OF_DELTA[delta] << (2 * (m & 3))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(packed)
    print(f"{output}: {len(packed)} bytes, sha256 {hashlib.sha256(packed).hexdigest()}")
    print(f"deltas: -1: {counts[-1]}, 0: {counts[0]}, +1: {counts[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
