"""The UI in English and Chinese: chosen by Accept-Language, overridden by a switch (a cookie).

Messages are data; the template helper ``_('key')`` looks them up.  Error
problems and fixes from the library stay in English (they are also what the
logs and the API say); the page chrome around them is translated.
"""

from __future__ import annotations

from flask import Flask, g, request

LANGS = ("en", "zh")
COOKIE = "medsearch_lang"

MESSAGES: dict[str, dict[str, str]] = {
    "en": {
        "app": "medsearch", "tagline": "CT archive search", "search": "Search", "search_placeholder":
        "e.g. 2 cm ground-glass nodule in the left lower lobe", "search_label": "Describe the finding",
        "login": "Log in", "logout": "Log out", "user": "User name", "password": "Password",
        "audit": "Audit", "understood": "Understood as", "refine": "Search with these terms",
        "finding": "Finding", "site": "Site", "size": "Size (mm)", "density": "Density", "negated": "Absent (no …)",
        "any": "any", "filters": "Filters", "date_from": "From", "date_to": "To", "modality": "Modality",
        "body_part": "Body part", "results": "Results", "no_results": "No matching studies.",
        "score": "Score", "why": "Why this result", "matched": "Matched", "unmatched": "Not matched",
        "key_slice": "Key slice", "open": "Open study", "more_like": "More like this", "study": "Study",
        "series": "Series", "slice": "Slice", "window": "Window", "lung": "Lung", "mediastinum": "Mediastinum",
        "open_pacs": "Open in PACS", "break_glass": "Break glass: reveal identifiers",
        "break_glass_help": "This decrypts the original study identifiers. The access, your name and your "
        "reason are recorded and reviewed by compliance.", "reason": "Reason (required)", "confirm": "Open",
        "language": "中文", "filter_user": "User", "filter_type": "Event type", "filter_patient": "Pseudonym",
        "since": "Since", "until": "Until", "apply": "Apply", "verify": "Verify chain", "export": "Export",
        "report": "Access report", "events": "Events", "reidentifications": "Re-identifications",
        "time": "Time", "actor": "User", "event": "Event", "outcome": "Outcome", "details": "Details",
        "chain_ok": "Chain intact", "chain_bad": "Chain BROKEN", "entries": "entries", "prev": "Previous",
        "next": "Next", "expired": "Your session ended. Please log in again.", "error": "Error",
        "back": "Back", "similar_to": "Studies like", "date": "Date", "findings": "Findings",
        "keyboard_help": "Keys: ←/→ or PageUp/PageDown scroll slices, L lung, M mediastinal window.",
        "all_types": "all types", "skip": "Skip to content", "total_n": "{n} total", "took": "ms", "why_col": "Reason",
        "counts": "Counts", "studies_viewed": "Studies viewed", "failures": "Failures", "views": "views",
        "probability": "probability", "none": "none",
        "upload_similar": "More like a DICOM series from disk", "upload_help": "The files are de-identified in "
        "memory and never stored.", "upload": "Find similar", "uploaded_series": "the uploaded series",
        "dicom_files": "DICOM files of one series",
    },
    "zh": {
        "app": "medsearch", "tagline": "CT 影像检索", "search": "检索", "search_placeholder":
        "例如：左肺下叶2cm磨玻璃结节", "search_label": "描述影像所见",
        "login": "登录", "logout": "退出", "user": "用户名", "password": "密码",
        "audit": "审计", "understood": "检索理解为", "refine": "按以下条件检索",
        "finding": "所见", "site": "部位", "size": "大小（毫米）", "density": "密度", "negated": "无（否定）",
        "any": "任意", "filters": "筛选", "date_from": "起始日期", "date_to": "截止日期", "modality": "检查类型",
        "body_part": "检查部位", "results": "检索结果", "no_results": "没有匹配的检查。",
        "score": "得分", "why": "匹配原因", "matched": "已匹配", "unmatched": "未匹配",
        "key_slice": "关键层面", "open": "打开检查", "more_like": "查找相似", "study": "检查",
        "series": "序列", "slice": "层面", "window": "窗位", "lung": "肺窗", "mediastinum": "纵隔窗",
        "open_pacs": "在 PACS 中打开", "break_glass": "紧急访问：显示原始标识",
        "break_glass_help": "此操作将解密原始检查标识。访问记录、您的姓名和理由将被记录并由合规人员审查。",
        "reason": "理由（必填）", "confirm": "打开",
        "language": "English", "filter_user": "用户", "filter_type": "事件类型", "filter_patient": "假名",
        "since": "开始", "until": "结束", "apply": "应用", "verify": "校验哈希链", "export": "导出",
        "report": "访问报告", "events": "事件", "reidentifications": "重识别记录",
        "time": "时间", "actor": "用户", "event": "事件", "outcome": "结果", "details": "详情",
        "chain_ok": "哈希链完整", "chain_bad": "哈希链已损坏", "entries": "条", "prev": "上一页",
        "next": "下一页", "expired": "会话已结束，请重新登录。", "error": "错误",
        "back": "返回", "similar_to": "相似检查：", "date": "日期", "findings": "所见",
        "keyboard_help": "快捷键：←/→ 或 PageUp/PageDown 翻页，L 肺窗，M 纵隔窗。",
        "all_types": "全部类型", "skip": "跳到正文", "total_n": "共 {n} 条", "took": "毫秒", "why_col": "理由",
        "counts": "计数", "studies_viewed": "查看的检查", "failures": "失败次数", "views": "次",
        "probability": "概率", "none": "无",
        "upload_similar": "以本地 DICOM 序列查找相似检查", "upload_help": "文件仅在内存中去标识化，不会被保存。",
        "upload": "查找相似", "uploaded_series": "上传的序列", "dicom_files": "同一序列的 DICOM 文件",
    },
}


def current_lang() -> str:
    lang = getattr(g, "lang", None)
    if lang:
        return lang
    chosen = request.cookies.get(COOKIE)
    if chosen not in LANGS:
        chosen = request.accept_languages.best_match(LANGS, default="en")
    g.lang = chosen
    return chosen


def translate(key: str) -> str:
    lang = current_lang()
    return MESSAGES[lang].get(key) or MESSAGES["en"].get(key, key)


def init_app(app: Flask) -> None:
    app.jinja_env.globals.update(_=translate, current_lang=current_lang, LANGS=LANGS)
