"""Which Ascend SoC this process runs on, named as Ascend C operator definitions and MindSpore name it.

SoC family names (the ``--soc_version`` / ``OpDef::AddConfig`` vocabulary): ``ascend910`` (Ascend
910, "910A": Atlas 800 training servers, the chip CodeGeeX was trained on), ``ascend910b`` (Atlas
A2, 910B), ``ascend910_93`` (Atlas A3, 910C), ``ascend310p``, ``ascend310b``, ``ascend950``.

``ascend_soc_version()`` asks MindSpore first (``MSContext.get_ascend_soc_version()``, the value
MindSpore itself uses to pick kernels and to look up a custom operator's
``op_impl/ai_core/tbe/config/<soc>/aic-<soc>-ops-info.json``), then CANN's documented
``aclrtGetSocName()`` (a chip name such as ``Ascend910B3``, mapped to its family by
``soc_family``). It returns ``""`` when neither knows, e.g. off Ascend.
"""

import ctypes
import re

SOC_FAMILIES = ("ascend910", "ascend910b", "ascend910_93", "ascend310p", "ascend310b", "ascend950")
DESCRIPTIONS = {"ascend910": "Ascend 910 / 910A, Atlas training series",
                "ascend910b": "Ascend 910B, Atlas A2", "ascend910_93": "Ascend 910C, Atlas A3",
                "ascend310p": "Ascend 310P", "ascend310b": "Ascend 310B", "ascend950": "Ascend 950"}

# Chip name prefixes (aclrtGetSocName) → family, most specific first: "Ascend910_9391" is A3,
# "Ascend910B2" is A2, "Ascend910A" / "Ascend910ProB" / "Ascend910PremiumA" are the first 910.
_CHIP_PATTERNS = ((r"ascend910_95", "ascend950"), (r"ascend950", "ascend950"),
                  (r"ascend910_93", "ascend910_93"), (r"ascend910b", "ascend910b"),
                  (r"ascend910", "ascend910"), (r"ascend310p", "ascend310p"),
                  (r"ascend310b", "ascend310b"))


def soc_family(name: str) -> str:
    """Family of a SoC or chip name (``"Ascend910B3"`` → ``"ascend910b"``, ``"Ascend910A"`` →
    ``"ascend910"``); a family name maps to itself; anything else is returned lower-cased."""
    lowered = name.strip().lower()
    for pattern, family in _CHIP_PATTERNS:
        if re.match(pattern, lowered):
            return family
    return lowered


def describe(family: str) -> str:
    """``"ascend910 (Ascend 910 / 910A, Atlas training series)"``; unknown names as they are."""
    if not family:
        return "unknown (neither MindSpore nor aclrtGetSocName reports one)"
    return f"{family} ({DESCRIPTIONS[family]})" if family in DESCRIPTIONS else family


def _mindspore_soc() -> str:
    try:
        from mindspore._c_expression import MSContext  # pylint: disable=import-outside-toplevel
        return MSContext.get_instance().get_ascend_soc_version() or ""
    except (ImportError, AttributeError, RuntimeError):
        return ""


def _acl_soc() -> str:
    """``aclrtGetSocName()`` of CANN's ``libascendcl.so``, or ``""`` without CANN."""
    try:
        acl = ctypes.CDLL("libascendcl.so")
    except OSError:
        return ""
    get = acl.aclrtGetSocName
    get.restype = ctypes.c_char_p
    name = get()
    return name.decode() if name else ""


def ascend_soc_version() -> str:
    """This process's Ascend SoC family (see module doc), or ``""`` when it cannot be told."""
    found = _mindspore_soc() or _acl_soc()
    return soc_family(found) if found else ""
