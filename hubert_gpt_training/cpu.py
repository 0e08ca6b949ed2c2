"""What the CPU can compute natively: bf16 without AVX512-BF16 or AMX is emulated, several times slower than fp32.

Measured on this project's machines (bench/paper_scale.py prints the same): an AMD EPYC with AVX2 only ran a
(64 x 2816) @ (2816 x 11264) product at 19 GFLOPS in bf16 against 47 in fp32, while an Intel CPU with AMX ran a bf16
1024 x 1024 product at 296 GFLOPS on one core.
"""

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of x86 CPUs that compute bf16 natively


def cpu_info(path="/proc/cpuinfo"):
    """{"cpu": model name, "avx2": bool, "avx512f": bool, "avx512_bf16": bool, "amx_bf16": bool}, or {} where the
    file cannot be read (not Linux) or lists no x86 flags (another architecture): unknown."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), None)
    if flags is None:
        return {}
    return {"cpu": name, **{flag: flag in flags for flag in ("avx2", "avx512f", *BF16_FLAGS)}}


def emulates_bf16(info):
    """True when `info` (from cpu_info) is known and names none of BF16_FLAGS."""
    return bool(info) and not any(info.get(flag) for flag in BF16_FLAGS)
