"""Query specifications, their phrases and their relevance to a study's labels.

A *spec* is a partial finding: ``{"type": ..., "site"?: ..., "density"?: ...,
"size_bin"?: ...}``.  Protocol (b) of the evaluation and the phrase pairs of
training are both generated from specs, and both judge a study against a spec
with :func:`relevance`, so training and evaluation agree on what a match is.

Canonical phrases come from the terminology (``medsearch.query``); the small
bilingual table here only *writes* English and Chinese query text from specs,
and is the fallback normaliser while the terminology is not installed.
"""

from __future__ import annotations

import functools
import re

from medsearch import vocab

_ZH_TYPE = {"nodule": "结节", "mass": "肿块", "ground-glass opacity": "磨玻璃影", "consolidation": "实变",
            "pleural effusion": "胸腔积液", "pneumothorax": "气胸", "emphysema": "肺气肿", "atelectasis": "肺不张",
            "cavity": "空洞"}
_ZH_SITE = {"right upper lobe": "右肺上叶", "right middle lobe": "右肺中叶", "right lower lobe": "右肺下叶",
            "left upper lobe": "左肺上叶", "left lower lobe": "左肺下叶", "lingula": "舌段",
            "right lung": "右肺", "left lung": "左肺", "pleura": "胸膜"}
_ZH_DENSITY = {"solid": "实性", "part-solid": "部分实性", "ground-glass": "磨玻璃密度", "calcified": "钙化"}
NORMAL_PHRASE = "no abnormality"
#: Types with a meaningful size (the heads' size bins; sizes of the others are ignored in matching).
SIZED_TYPES = ("nodule", "mass", "cavity", "ground-glass opacity", "consolidation")


def size_text(size_bin: int) -> str:
    """A representative diameter for a size bin, e.g. '8 mm'."""
    return f"{(4, 8, 15, 25, 40)[size_bin]} mm"


def fallback_canonical_phrase(spec: dict) -> str:
    """Canonical English phrase of a spec or a finding: '<density> <type> in the <site>, <size>'."""
    words = []
    if spec.get("density"):
        words.append(spec["density"])
    words.append(spec["type"])
    text = " ".join(words)
    if spec.get("site"):
        text += f" in the {spec['site']}"
    if spec.get("size_bin") is not None:
        text += f", {size_text(spec['size_bin'])}"
    return text


def canonical_phrase(spec: dict) -> str:
    """The terminology's canonical phrase of a spec (fallback: :func:`fallback_canonical_phrase`)."""
    try:
        from medsearch.query import canonical_phrase as terms_phrase
    except ImportError:
        return fallback_canonical_phrase(spec)
    finding = {k: v for k, v in spec.items() if k != "size_bin"}
    if spec.get("size_bin") is not None:
        finding["size_mm"] = float(size_text(spec["size_bin"]).split()[0])
    return terms_phrase(finding)


def spec_text(spec: dict, lang: str) -> str:
    """Query text a radiologist might type for ``spec`` in ``lang`` ('en' or 'zh')."""
    if lang == "en":
        return fallback_canonical_phrase(spec)
    text = _ZH_SITE.get(spec.get("site"), "") + _ZH_DENSITY.get(spec.get("density"), "") + _ZH_TYPE[spec["type"]]
    if spec.get("size_bin") is not None:
        text += f"，约{size_text(spec['size_bin']).split()[0]}mm"
    return text


def spec_of(finding: dict, fields: tuple[str, ...]) -> dict:
    """The spec of ``finding`` restricted to ``fields`` (type always included)."""
    spec = {"type": finding["type"]}
    if "site" in fields and finding.get("site"):
        spec["site"] = finding["site"]
    if "density" in fields and finding.get("density"):
        spec["density"] = finding["density"]
    if "size_bin" in fields and finding.get("diameter_mm") and finding["type"] in SIZED_TYPES:
        spec["size_bin"] = vocab.size_bin(float(finding["diameter_mm"]))
    return spec


def finding_matches(finding: dict, spec: dict) -> bool:
    if finding["type"] != spec["type"]:
        return False
    if spec.get("site") and not vocab.site_within(finding.get("site") or "", spec["site"]):
        return False
    if spec.get("density") and finding.get("density") != spec["density"]:
        return False
    if spec.get("size_bin") is not None:
        if not finding.get("diameter_mm") or vocab.size_bin(float(finding["diameter_mm"])) != spec["size_bin"]:
            return False
    return True


def relevance(findings: list[dict], spec: dict) -> int:
    """Graded relevance of a study to a spec: 2 full match, 1 same type only, 0 otherwise."""
    if any(finding_matches(f, spec) for f in findings):
        return 2
    return 1 if any(f["type"] == spec["type"] for f in findings) else 0


def finding_signature(finding: dict) -> tuple:
    size = finding.get("diameter_mm") if finding["type"] in SIZED_TYPES else None
    return (finding["type"], finding.get("site"), finding.get("laterality"), finding.get("density"),
            vocab.size_bin(float(size)) if size else None)


def study_key(findings: list[dict]) -> frozenset:
    """Studies with equal keys have identical finding sets (the same answer in protocol a)."""
    return frozenset(finding_signature(f) for f in findings)


def report_canonical_from_labels(findings: list[dict]) -> str:
    """Canonical text of a whole report's finding set (training target)."""
    if not findings:
        return NORMAL_PHRASE
    phrases = sorted(canonical_phrase(spec_of(f, ("site", "density", "size_bin"))) for f in findings)
    return ", ".join(dict.fromkeys(phrases))


def report_canonical_from_predictions(findings: list[dict], threshold: float = 0.5) -> str:
    """Canonical text of a complete report of a series' predicted findings (those at least ``threshold``
    likely; :mod:`medsearch.models.slot_findings`): the findings, then every finding type not among them
    negated, so that it reads as a whole study ("more like this")."""
    kept = [{"type": f.get("finding_type") or f.get("type"), "site": f.get("site"),
             "laterality": f.get("laterality"), "density": f.get("density"), "diameter_mm": f.get("size_mm")}
            for f in findings if float(f.get("probability", 1.0)) >= threshold]
    kept = [f for f in kept if f["type"] in vocab.FINDING_TYPES]
    if not kept:
        return NORMAL_PHRASE
    named = {f["type"] for f in kept}
    absent = [f"no {t}" for t in vocab.FINDING_TYPES if t not in named]
    return ", ".join([report_canonical_from_labels(kept)] + absent)


# -- fallback normaliser: raw EN/ZH text -> canonical text (used only without medsearch.query)
_EN_TYPE = {"nodule": "nodule", "nodules": "nodule", "mass": "mass", "ground-glass opacity": "ground-glass opacity",
            "ggo": "ground-glass opacity", "consolidation": "consolidation", "pleural effusion": "pleural effusion",
            "effusion": "pleural effusion", "pneumothorax": "pneumothorax", "emphysema": "emphysema",
            "atelectasis": "atelectasis", "cavity": "cavity", "cavitary": "cavity", "ggn": "nodule"}
_EN_SITE = {"right upper lobe": "right upper lobe", "rul": "right upper lobe", "right middle lobe": "right middle lobe",
            "rml": "right middle lobe", "right lower lobe": "right lower lobe", "rll": "right lower lobe",
            "left upper lobe": "left upper lobe", "lul": "left upper lobe", "left lower lobe": "left lower lobe",
            "lll": "left lower lobe", "lingula": "lingula", "right lung": "right lung", "left lung": "left lung"}
_EN_DENSITY = {"part-solid": "part-solid", "solid": "solid", "ground-glass": "ground-glass", "calcified": "calcified"}
_NEG = re.compile(r"\b(no|without|negative for)\b|无|未见|未发现|没有")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(mm|cm|毫米|厘米)", re.I)


def _first(table: dict, text: str) -> str | None:
    hits = [(text.find(k), -len(k), v) for k, v in table.items() if k in text]
    hits = [h for h in hits if h[0] >= 0]
    return min(hits)[2] if hits else None


def fallback_normalise(text: str) -> str:
    """A minimal dictionary normaliser for EN/ZH findings text (negated sentences dropped)."""
    zh_type = {v: k for k, v in _ZH_TYPE.items()} | {"磨玻璃结节": "nodule", "积液": "pleural effusion"}
    zh_site = {v: k for k, v in _ZH_SITE.items()} | {"右上叶": "right upper lobe", "右中叶": "right middle lobe",
                                                     "右下叶": "right lower lobe", "左上叶": "left upper lobe",
                                                     "左下叶": "left lower lobe"}
    zh_density = {v: k for k, v in _ZH_DENSITY.items()} | {"磨玻璃": "ground-glass"}
    phrases = []
    for sentence in re.split(r"[.;。；\n]", text.lower()):
        if not sentence.strip() or _NEG.search(sentence):
            continue
        ftype = _first(_EN_TYPE, sentence) or _first(zh_type, sentence)
        if not ftype:
            continue
        spec: dict = {"type": ftype}
        site = _first(_EN_SITE, sentence) or _first(zh_site, sentence)
        if site:
            spec["site"] = site
        density = _first(_EN_DENSITY, sentence) or _first(zh_density, sentence)
        if density and not (ftype == "ground-glass opacity" and density == "ground-glass"):
            spec["density"] = density
        size = _SIZE.search(sentence)
        if size:
            mm = float(size.group(1)) * (10 if size.group(2).lower() in ("cm", "厘米") else 1)
            spec["size_bin"] = vocab.size_bin(mm)
        phrases.append(fallback_canonical_phrase(spec))
    return "; ".join(sorted(dict.fromkeys(phrases))) or NORMAL_PHRASE


@functools.lru_cache(maxsize=65536)
def normalise(text: str) -> str:
    """Raw EN or ZH text -> the canonical text the text tower encodes (through the terminology)."""
    try:
        from medsearch.query import parse
    except ImportError:
        return fallback_normalise(text)
    return parse(text).canonical or NORMAL_PHRASE
