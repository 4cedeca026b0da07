"""Bilingual (English / Chinese) radiology reports for synthetic studies.

Reports are written from the labels only, in the usual structure (examination,
comparison, technique, findings, impression), with varied phrasing, the
abbreviations radiologists use (RUL, GGO, GGN; 右上叶), measurements
("2.1 x 1.8 cm", "约1.2cm×1.0cm"), pertinent negatives that never contradict
a finding, and comparisons with the prior study.

The per-finding sentence builders (:func:`sentence_en`, :func:`sentence_zh`)
are public: the terminology tests use them as parser cases.
"""

from __future__ import annotations

import numpy as np

LOBE_ABBR = {"right upper lobe": "RUL", "right middle lobe": "RML", "right lower lobe": "RLL",
             "left upper lobe": "LUL", "left lower lobe": "LLL", "lingula": "lingula"}
LOBE_ZH = {"right upper lobe": ("右肺上叶", "右上叶"), "right middle lobe": ("右肺中叶", "右中叶"),
           "right lower lobe": ("右肺下叶", "右下叶"), "left upper lobe": ("左肺上叶", "左上叶"),
           "left lower lobe": ("左肺下叶", "左下叶"), "lingula": ("左肺上叶舌段", "舌段"),
           "right lung": ("右肺", "右肺"), "left lung": ("左肺", "左肺")}
SIDE_ZH = {"right": "右侧", "left": "左侧", "bilateral": "双侧"}

#: Words that name each finding type in a report (used by tests: every finding is named).
TYPE_TERMS_EN = {"nodule": ("nodule", "GGN"), "mass": ("mass",), "cavity": ("cavit",),
                 "consolidation": ("consolidation",), "ground-glass opacity": ("ground-glass opacit", "GGO"),
                 "pleural effusion": ("effusion",), "pneumothorax": ("pneumothorax",),
                 "emphysema": ("emphysema",), "atelectasis": ("atelectasis",)}
TYPE_TERMS_ZH = {"nodule": ("结节",), "mass": ("肿块",), "cavity": ("空洞",), "consolidation": ("实变",),
                 "ground-glass opacity": ("磨玻璃影", "磨玻璃密度影"), "pleural effusion": ("积液",),
                 "pneumothorax": ("气胸",), "emphysema": ("肺气肿",), "atelectasis": ("肺不张",)}
#: Pertinent negatives; each is said only when no finding of its types is present.
NEGATIVES = [
    (("pleural effusion",), ("No pleural effusion.", "No pleural effusions.", "No pleural fluid."),
     ("无胸腔积液。", "双侧胸腔未见积液。")),
    (("pneumothorax",), ("No pneumothorax.", "There is no pneumothorax."), ("未见气胸。", "无气胸。")),
    (("consolidation",), ("No focal consolidation.", "No airspace consolidation."), ("未见实变。", "肺内未见实变影。")),
    (("nodule", "mass"), ("No suspicious pulmonary nodule or mass.", "No pulmonary nodules or masses."),
     ("未见可疑结节或肿块。", "肺内未见结节及肿块。")),
]


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def cm(mm: float) -> str:
    return f"{mm / 10:.1f}"


def size_en(f: dict, rng) -> str:
    d, s = f["diameter_mm"], f.get("short_axis_mm")
    if d is None:
        return ""
    if d < 10 and rng.random() < 0.7:
        return f"{d:.0f} mm"
    if s and rng.random() < 0.8:
        return f"{cm(d)} x {cm(s)} cm"
    return f"{cm(d)} cm"


def size_zh(f: dict, rng) -> str:
    d, s = f["diameter_mm"], f.get("short_axis_mm")
    if d is None:
        return ""
    if d < 10 and rng.random() < 0.6:
        return f"直径约{d:.0f}mm"
    if s and rng.random() < 0.8:
        return f"大小约{cm(d)}cm×{cm(s)}cm"
    return f"直径约{cm(d)}cm"


def site_en(site: str, rng) -> str:
    if site == "lingula":
        return "the lingula"
    if site in LOBE_ABBR and rng.random() < 0.55:
        return f"the {LOBE_ABBR[site]}"
    return f"the {site}"


def site_zh(site: str, rng) -> str:
    full, short = LOBE_ZH[site]
    return short if rng.random() < 0.4 else full


def _effusion_size(mm: float) -> tuple[str, str]:
    if mm < 20:
        return "small", "少量"
    if mm < 40:
        return "moderate", "中等量"
    return "large", "大量"


_DENSITY_EN = {"solid": "solid", "ground-glass": "ground-glass", "part-solid": "part-solid",
               "calcified": "calcified"}
_DENSITY_ZH = {"solid": "实性", "ground-glass": "磨玻璃", "part-solid": "部分实性", "calcified": "钙化"}
_SHAPE_EN = {"round": ("well-circumscribed", "smooth", "round"), "lobulated": ("lobulated",),
             "spiculated": ("spiculated",)}
_SHAPE_ZH = {"round": "边缘光整", "lobulated": "呈分叶状", "spiculated": "边缘可见毛刺"}


def sentence_en(f: dict, rng, image_ref: bool = True) -> str:
    """One English findings sentence for a labelled finding."""
    t, site = f["type"], f["site"]
    where = site_en(site, rng) if site != "pleura" else ""
    size = size_en(f, rng)
    img = f" (series 2, image {f['key_image_number']})" if image_ref and f.get("key_image_number") and rng.random() < 0.4 else ""
    if t == "nodule":
        dens = f["density"]
        shape = _pick(rng, _SHAPE_EN[f["shape"] or "round"])
        if dens == "ground-glass" and rng.random() < 0.5:
            return f"{size} pure ground-glass nodule (GGN) in {where}{img}."
        if dens == "calcified":
            return _pick(rng, (f"{size} calcified nodule in {where}, consistent with a granuloma.",
                               f"Calcified {size} nodule in {where}{img}, benign."))
        return _pick(rng, (f"There is a {size} {shape} {dens} nodule in {where}{img}.",
                           f"{shape.capitalize()} {dens} nodule in {where} measuring {size}{img}.",
                           f"A {dens} nodule with {shape} margins is seen in {where}, measuring {size}{img}."))
    if t == "mass":
        return _pick(rng, (f"{_pick(rng, _SHAPE_EN[f['shape'] or 'round']).capitalize()} mass in {where} measuring {size}{img}.",
                           f"There is a {size} {_pick(rng, _SHAPE_EN[f['shape'] or 'round'])} soft-tissue mass in {where}{img}."))
    if t == "cavity":
        return _pick(rng, (f"Thick-walled cavitary lesion in {where} measuring {size}{img}.",
                           f"There is a {size} cavity with irregular walls in {where}{img}."))
    if t == "consolidation":
        return _pick(rng, (f"Consolidation in {where} with air bronchograms, measuring approximately {size}.",
                           f"Patchy consolidation is present in {where}.",
                           f"Airspace consolidation in {where}, approximately {size} in extent."))
    if t == "ground-glass opacity":
        return _pick(rng, (f"Patchy ground-glass opacity (GGO) in {where}, approximately {size}.",
                           f"Ground-glass opacities in {where}.",
                           f"Focal GGO in {where} measuring about {size}."))
    if t == "atelectasis":
        return _pick(rng, (f"Linear atelectasis in {where}.", f"Subsegmental atelectasis in {where}.",
                           f"Plate-like atelectasis in {where}, {size} in length."))
    if t == "emphysema":
        lat = f["laterality"]
        return _pick(rng, (f"Centrilobular emphysema of the {lat} lung, upper lobe predominant.",
                           f"{lat.capitalize()} upper-zone predominant centrilobular emphysema."))
    if t == "pleural effusion":
        sides = f.get("sides_mm") or {f["laterality"]: f["diameter_mm"]}
        if f["laterality"] == "bilateral":
            r, l_ = _effusion_size(sides["right"])[0], _effusion_size(sides["left"])[0]
            if r == l_:
                return _pick(rng, (f"Bilateral {r} pleural effusions.", f"{r.capitalize()} bilateral pleural effusions, layering dependently."))
            return f"Bilateral pleural effusions, {r} on the right and {l_} on the left."
        sz = _effusion_size(f["diameter_mm"])[0]
        return _pick(rng, (f"{sz.capitalize()} {f['laterality']} pleural effusion.",
                           f"There is a {sz} dependent {f['laterality']} pleural effusion."))
    if t == "pneumothorax":
        sz = "small" if f["diameter_mm"] < 20 else "moderate"
        return _pick(rng, (f"{sz.capitalize()} {f['laterality']} apical pneumothorax, measuring {f['diameter_mm']:.0f} mm.",
                           f"There is a {sz} {f['laterality']} pneumothorax with an apical rim of {f['diameter_mm']:.0f} mm."))
    raise ValueError(t)


def sentence_zh(f: dict, rng) -> str:
    """One Chinese findings sentence for a labelled finding."""
    t, site = f["type"], f["site"]
    where = site_zh(site, rng) if site != "pleura" else ""
    size = size_zh(f, rng)
    if t == "nodule":
        dens = f["density"]
        if dens == "calcified":
            return f"{where}见钙化结节，{size}，考虑肉芽肿。"
        if dens == "ground-glass":
            return _pick(rng, (f"{where}见纯磨玻璃结节，{size}。", f"{where}见一磨玻璃结节（GGN），{size}。"))
        return f"{where}见一{_DENSITY_ZH[dens]}结节，{size}，{_SHAPE_ZH[f['shape'] or 'round']}。"
    if t == "mass":
        return f"{where}见软组织肿块，{size}，{_SHAPE_ZH[f['shape'] or 'round']}。"
    if t == "cavity":
        return _pick(rng, (f"{where}见厚壁空洞，{size}。", f"{where}见空洞性病变，{size}，壁厚薄不均。"))
    if t == "consolidation":
        return _pick(rng, (f"{where}见片状实变影，其内可见支气管充气征。", f"{where}见实变，范围约{cm(f['diameter_mm'])}cm。"))
    if t == "ground-glass opacity":
        return _pick(rng, (f"{where}见片状磨玻璃影。", f"{where}见磨玻璃密度影（GGO），范围约{cm(f['diameter_mm'])}cm。"))
    if t == "atelectasis":
        return _pick(rng, (f"{where}见条索状肺不张。", f"{where}见盘状肺不张。"))
    if t == "emphysema":
        return f"{LOBE_ZH[site][0]}见小叶中心型肺气肿，以上叶为著。"
    if t == "pleural effusion":
        sides = f.get("sides_mm") or {f["laterality"]: f["diameter_mm"]}
        if f["laterality"] == "bilateral":
            return f"双侧胸腔积液，右侧{_effusion_size(sides['right'])[1]}，左侧{_effusion_size(sides['left'])[1]}。"
        return f"{SIDE_ZH[f['laterality']]}胸腔{_effusion_size(f['diameter_mm'])[1]}积液。"
    if t == "pneumothorax":
        return f"{SIDE_ZH[f['laterality']]}肺尖部气胸，气带宽约{f['diameter_mm']:.0f}mm，肺组织受压。"
    raise ValueError(t)


def _change_en(f: dict, prior: str, rng) -> str:
    where = site_en(f["site"], rng) if f["site"] != "pleura" else f"the {f['laterality']} pleural space"
    if f["site"] in ("right lung", "left lung") or f["laterality"] == "bilateral" and f["site"] != "pleura":
        where = "both lungs" if f["laterality"] == "bilateral" else f"the {f['site']}"
    if f["change"] == "new":
        return _pick(rng, (f"The {f['type']} in {where} is new since {prior}.", f"New {f['type']} in {where} compared with {prior}."))
    if f["change"] == "growing":
        return (f"The {f['type']} in {where} has increased in size, now {f['diameter_mm']:.0f} mm, "
                f"previously {f['prior_diameter_mm']:.0f} mm.")
    if f["change"] == "stable":
        return _pick(rng, (f"The {f['type']} in {where} is stable since {prior}.",
                           f"Unchanged {f['type']} in {where} compared with {prior}."))
    return ""


def _change_zh(f: dict, prior: str, rng) -> str:
    where = site_zh(f["site"], rng) if f["site"] != "pleura" else SIDE_ZH[f["laterality"]] + "胸腔"
    if f["type"] == "emphysema" and f["laterality"] == "bilateral":
        where = "双肺"
    term = TYPE_TERMS_ZH[f["type"]][0]
    if f["change"] == "new":
        return f"{where}{term}为新发（与{prior}比较）。"
    if f["change"] == "growing":
        return f"{where}{term}较前增大，现直径约{f['diameter_mm']:.0f}mm，原约{f['prior_diameter_mm']:.0f}mm。"
    if f["change"] == "stable":
        return f"{where}{term}与{prior}比较无明显变化。"
    return ""


def _impression_en(f: dict, rng) -> str:
    t = f["type"]
    where = LOBE_ABBR.get(f["site"], f["site"]) if f["site"] != "pleura" else f["laterality"]
    if t == "nodule":
        d = f["diameter_mm"]
        if f["density"] == "calcified":
            return f"Calcified {where} granuloma."
        rec = ("No routine follow-up required." if d < 6 else
               "Follow-up CT in 6-12 months recommended." if d < 8 else
               "Consider PET-CT or tissue sampling." if f["shape"] == "spiculated" or d >= 15 else
               "Follow-up CT in 3 months recommended.")
        dens = "GGN" if f["density"] == "ground-glass" else f"{f['density']} nodule"
        return f"{d:.0f} mm {where} {dens}. {rec}"
    if t == "mass":
        return f"{cm(f['diameter_mm'])} cm {where} mass, suspicious for malignancy. Tissue sampling recommended."
    if t == "cavity":
        return f"Cavitary lesion in the {where}; infection (including tuberculosis) or cavitating neoplasm."
    if t == "consolidation":
        return f"{where} consolidation, likely pneumonia in the appropriate clinical setting."
    if t == "ground-glass opacity":
        return f"{where} ground-glass opacity, likely infectious or inflammatory."
    if t == "atelectasis":
        return f"Subsegmental atelectasis in the {where}."
    if t == "emphysema":
        return "Bilateral emphysema." if f["laterality"] == "bilateral" else f"Emphysema of the {f['laterality']} lung."
    if t == "pleural effusion":
        return f"{f['laterality'].capitalize()} pleural effusion{'s' if f['laterality'] == 'bilateral' else ''}."
    if t == "pneumothorax":
        return f"{f['laterality'].capitalize()} apical pneumothorax."
    raise ValueError(t)


def _impression_zh(f: dict, rng) -> str:
    t = f["type"]
    where = LOBE_ZH[f["site"]][1] if f["site"] in LOBE_ZH else SIDE_ZH[f["laterality"]]
    if t == "nodule":
        if f["density"] == "calcified":
            return f"{where}钙化结节，考虑良性。"
        rec = "建议定期复查。" if f["diameter_mm"] < 15 and f["shape"] != "spiculated" else "建议进一步检查（PET-CT或穿刺活检）。"
        return f"{where}{_DENSITY_ZH[f['density']]}结节，{rec}"
    if t == "mass":
        return f"{where}肿块，考虑恶性可能，建议活检。"
    if t == "cavity":
        return f"{where}空洞性病变，感染（包括结核）或肿瘤待排。"
    if t == "consolidation":
        return f"{where}实变，考虑炎症。"
    if t == "ground-glass opacity":
        return f"{where}磨玻璃影，考虑感染或炎性病变。"
    if t == "atelectasis":
        return f"{where}局限性肺不张。"
    if t == "emphysema":
        return "双肺肺气肿。" if f["laterality"] == "bilateral" else f"{LOBE_ZH[f['site']][0]}肺气肿。"
    if t == "pleural effusion":
        return f"{SIDE_ZH[f['laterality']]}胸腔积液。"
    if t == "pneumothorax":
        return f"{SIDE_ZH[f['laterality']]}气胸。"
    raise ValueError(t)


def _merge_emphysema(findings: list[dict]) -> list[dict]:
    """Emphysema of both lungs is reported once, as bilateral."""
    emph = [f for f in findings if f["type"] == "emphysema"]
    if len(emph) == 2:
        rest = [f for f in findings if f["type"] != "emphysema"]
        merged = {**emph[0], "laterality": "bilateral", "site": "right lung"}
        return rest + [merged]
    return findings


def write_reports(labels: dict, acq, rng: np.random.Generator) -> tuple[str, str]:
    """(English report, Chinese report) for a labelled study."""
    findings = labels["findings"]
    prior = labels.get("prior_study_date")
    contrast = labels.get("contrast")
    present = {f["type"] for f in findings}
    rep_f = _merge_emphysema(findings)

    en = ["EXAMINATION: CT chest " + ("with intravenous contrast." if contrast else "without contrast."),
          f"COMPARISON: CT chest dated {prior}." if prior else "COMPARISON: None.",
          f"TECHNIQUE: Axial images at {acq.thickness:g} mm slice thickness, {acq.kernel} kernel.",
          "", "FINDINGS:"]
    lung_lines = []
    for f in rep_f:
        s = sentence_en(f, rng)
        if f["type"] == "emphysema" and f["laterality"] == "bilateral":
            s = _pick(rng, ("Bilateral centrilobular emphysema, upper lobe predominant.",
                            "Centrilobular emphysema in both lungs, upper-zone predominant."))
        lung_lines.append(s)
        if prior and f.get("change"):
            lung_lines.append(_change_en(f, prior, rng))
    for r in labels.get("resolved", []):
        lung_lines.append(f"The previously noted {r['prior_diameter_mm']:.0f} mm {r['type']} in "
                          f"{site_en(r['site'], rng)} has resolved.")
    negs_en, negs_zh = [], []
    for types, en_opts, zh_opts in NEGATIVES:
        if not present & set(types):
            negs_en.append(_pick(rng, en_opts))
            negs_zh.append(_pick(rng, zh_opts))
    if not findings:
        lung_lines.insert(0, _pick(rng, ("The lungs are clear.", "Lungs are clear bilaterally.",
                                          "No focal lung abnormality.")))
    en.append("Lungs and pleura: " + " ".join(lung_lines + negs_en))
    en.append("Mediastinum: " + _pick(rng, ("Heart size is normal. No pericardial effusion. No mediastinal or hilar lymphadenopathy.",
                                             "Normal heart size. No enlarged mediastinal or hilar lymph nodes.")))
    en.append("Upper abdomen: " + _pick(rng, ("Unremarkable.", "Visualized upper abdomen is unremarkable.")))
    en.append("Bones: " + _pick(rng, ("No aggressive osseous lesion.", "Mild degenerative changes of the thoracic spine.")))
    en += ["", "IMPRESSION:"]
    imp = [_impression_en(f, rng) for f in rep_f]
    for r in labels.get("resolved", []):
        imp.append(f"Resolution of the previously seen {LOBE_ABBR.get(r['site'], r['site'])} {r['type']}.")
    if not imp:
        imp = [_pick(rng, ("No acute cardiopulmonary abnormality.", "Normal CT of the chest.",
                           "No acute intrathoracic abnormality."))]
    en += [f"{i + 1}. {s}" for i, s in enumerate(imp)]

    zh = ["检查项目：胸部CT" + ("增强扫描。" if contrast else "平扫。"),
          f"对比：与{prior}胸部CT比较。" if prior else "对比：无。", "", "影像所见："]
    lines = [sentence_zh(f, rng) for f in rep_f]
    lines = [("双肺见小叶中心型肺气肿，以上叶为著。" if f["type"] == "emphysema" and f["laterality"] == "bilateral" else s)
             for f, s in zip(rep_f, lines)]
    if prior:
        lines += [_change_zh(f, prior, rng) for f in rep_f if f.get("change")]
    for r in labels.get("resolved", []):
        lines.append(f"原{site_zh(r['site'], rng)}{TYPE_TERMS_ZH[r['type']][0]}已吸收消失。")
    if not findings:
        lines.insert(0, _pick(rng, ("双肺纹理清晰，未见异常密度影。", "双肺野清晰。")))
    zh.append("".join(lines + negs_zh))
    zh.append(_pick(rng, ("纵隔居中，心影大小正常，纵隔及肺门未见肿大淋巴结。", "心脏大小正常，纵隔内未见肿大淋巴结。")))
    zh.append(_pick(rng, ("所见骨质未见明显异常。", "胸椎轻度退行性改变。")))
    zh += ["", "诊断意见："]
    imp_zh = [_impression_zh(f, rng) for f in rep_f]
    for r in labels.get("resolved", []):
        imp_zh.append(f"原{LOBE_ZH.get(r['site'], (r['site'], r['site']))[1]}{TYPE_TERMS_ZH[r['type']][0]}已吸收。")
    if not imp_zh:
        imp_zh = [_pick(rng, ("胸部CT未见明显异常。", "双肺未见明确病变。"))]
    zh += [f"{i + 1}. {s}" for i, s in enumerate(imp_zh)]
    return "\n".join(en), "\n".join(zh)
