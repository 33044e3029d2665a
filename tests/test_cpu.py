"""Specification of the CPU line every table of timings or int8 results carries."""

from __future__ import annotations

from cifar_deploy.cpu import CpuInfo, cpu_info, parse_cpuinfo

SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx_vnni avx512_bf16 amx_bf16 amx_int8 amx_tile
"""
ZEN3 = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx avx2 fma
"""
ZEN4 = """model name\t: AMD EPYC 9B14
flags\t\t: avx2 avx512f avx512_vnni avx512_bf16
"""
GRAVITON3 = """processor\t: 0
Features\t: fp asimd asimddp sve i8mm bf16
CPU implementer\t: 0x41
"""


def cpu(text: str) -> CpuInfo:
    model, flags = parse_cpuinfo(text)
    return CpuInfo(model=model or "arm", cores=2, flags=flags)


def test_each_cpu_kind_names_its_int8_and_bf16_instructions():
    assert (cpu(SAPPHIRE_RAPIDS).int8, cpu(SAPPHIRE_RAPIDS).bf16) == (
        "AMX, AVX-512 VNNI, AVX-VNNI",
        "AMX, AVX512-BF16",
    )
    assert (cpu(ZEN4).int8, cpu(ZEN4).bf16) == ("AVX-512 VNNI", "AVX512-BF16")
    assert (cpu(ZEN3).int8, cpu(ZEN3).bf16) == ("AVX2 only (no VNNI)", "none")
    assert (cpu(GRAVITON3).int8, cpu(GRAVITON3).bf16) == ("Arm i8mm, Arm dotprod", "Arm BF16")


def test_vnni_tells_whether_onnxruntime_accumulates_int8_in_32_bits():
    assert cpu(SAPPHIRE_RAPIDS).vnni and cpu(ZEN4).vnni
    assert not cpu(ZEN3).vnni


def test_unknown_flags_say_unknown_rather_than_none():
    blank = CpuInfo(model="Apple M2", cores=8, flags=frozenset())
    assert (blank.int8, blank.bf16) == ("unknown", "unknown")


def test_the_label_names_model_cores_and_both_capabilities():
    label = cpu(ZEN3).label()
    assert label == "AMD EPYC 7B13, 2 cores; int8: AVX2 only (no VNNI); bf16: none"
    assert cpu_info().model and "int8:" in cpu_info().label()
