"""Chinese for the few sentences Streamlit's own frontend writes (file uploader, connection-lost dialog).

Streamlit has no API to translate them: they are literals in its JavaScript bundle. In the Chinese UI a tiny
script, placed on each page run in a hidden `st.iframe` (no layout space: HIDE), watches the page (its parent document: that iframe
is same-origin) and rewrites those text nodes in place. It keeps working after the server
goes away, which is exactly when the connection dialog appears. Switching the tab to English runs it the other
way, so nodes React has not redrawn go back to Streamlit's English.
"""

from __future__ import annotations

import json

import streamlit as st

# Exact sentences of Streamlit 1.67's frontend (checked against .venv's static bundle by tests/app/test_streamlit_zh.py).
EXACT = {
    "Upload": "上传",
    "Upload directories": "上传文件夹",
    "Connection error": "连接中断",
    "Is Streamlit still running? If you accidentally stopped Streamlit, just restart it in your terminal:":
        "仪表盘服务还在运行吗？如果它停止了，请在终端里重新启动（./run_app.sh）：",
    "Streamlit server is not responding. Are you connected to the internet?":
        "仪表盘服务没有响应：它可能已停止（用 ./run_app.sh 重新启动），或者网络断开了。",
    "Connecting": "正在连接",
    "Running...": "运行中…",
    "Stop": "停止",
    "Rerun": "重新运行",
    "Uploading...": "正在上传…",
    "Upload failed": "上传失败",
    "No results": "没有匹配项",
    "Choose an option": "请选择一项",
    "Choose options": "请选择（可多选）",
    "Number is above the allowed range.": "数值高于允许的范围。",
    "Number is below the allowed range.": "数值低于允许的范围。",
    "Error": "错误",
    "Skip to main content": "跳到主要内容",  # the skip link a keyboard user meets first  # the bold start of a widget's error tooltip: "**Error**: Number is above..."
}
# Sentences with a value in them: (pattern of the English, its Chinese) and, in BACK, the way back to English.
PATTERNS = [
    (r"^(\d+(?:\.\d+)?\s*[KMG]?B) per file", "单个文件不超过 $1"),
    (r"^Number is above the allowed range\. Please enter a value less than or equal to (.+)\.$",
     "数值高于允许的范围：请输入不大于 $1 的值。"),
    (r"^Number is below the allowed range\. Please enter a value greater than or equal to (.+)\.$",
     "数值低于允许的范围：请输入不小于 $1 的值。"),
    (r"^Number is outside the allowed range\. Please enter a value between (.+) and (.+)\.$",
     "数值超出允许的范围：请输入 $1 到 $2 之间的值。"),
    (r"^Press Enter to apply$", "按回车键应用"),
    (r"^Press Enter to submit form$", "按回车键提交表单"),
    (r"^Press (⌘|Ctrl)\+Enter to apply$", "按 $1+回车键应用"),
]
# Where each pattern's sentence is built in Streamlit's bundle (a template literal), for tests/app/test_streamlit_zh.py.
TEMPLATES = ["per file`", "Please enter a value less than or equal to ${",
             "Please enter a value greater than or equal to ${", "Please enter a value between ${", "`Press Enter to ${",
             "+Enter to ${"]
BACK = [
    (r"^单个文件不超过 (\S+)", "$1 per file"),
    (r"^数值高于允许的范围：请输入不大于 (.+) 的值。$",
     "Number is above the allowed range. Please enter a value less than or equal to $1."),
    (r"^数值低于允许的范围：请输入不小于 (.+) 的值。$",
     "Number is below the allowed range. Please enter a value greater than or equal to $1."),
    (r"^数值超出允许的范围：请输入 (.+) 到 (.+) 之间的值。$",
     "Number is outside the allowed range. Please enter a value between $1 and $2."),
    (r"^按回车键应用$", "Press Enter to apply"),
    (r"^按回车键提交表单$", "Press Enter to submit form"),
    (r"^按 (⌘|Ctrl)\+回车键应用$", "Press $1+Enter to apply"),
]

SCRIPT = """<script>
(function () {
  const doc = window.parent.document;
  doc.__studioLang = %(lang)s;
  const zh = {exact: %(exact)s, patterns: %(patterns)s.map(([re, to]) => [new RegExp(re), to])};
  const en = {exact: Object.fromEntries(Object.entries(zh.exact).map(([a, b]) => [b, a])),
              patterns: %(back)s.map(([re, to]) => [new RegExp(re), to])};
  const USER_TEXT = '[data-testid="stMarkdownContainer"],[data-testid="stText"],[data-testid="stCode"],pre,textarea,input,[data-testid="stDataFrame"],[data-testid="stChatMessage"]';
  function fix(node) {
    if (!node) return;
    const {exact, patterns} = doc.__studioLang === "zh" ? zh : en;
    const walker = doc.createTreeWalker(node, NodeFilter.SHOW_TEXT);
    for (let n = walker.currentNode; n; n = walker.nextNode()) {
      if (n.nodeType !== 3) continue;
      const el = n.parentElement;
      // never rewrite the user's own words; a widget's error tooltip (a number out of range) is Streamlit's, though
      if (el && el.closest(USER_TEXT) && !el.closest('button,[data-testid="stTooltipErrorContent"]')) continue;
      let s = n.nodeValue.trim();
      if (!s) continue;
      const lead = s.startsWith(": ") ? ": " : "";  // the sentence after "**Error**" in an error tooltip
      s = s.slice(lead.length);
      if (exact[s] !== undefined) { n.nodeValue = lead + exact[s]; continue; }
      for (const [re, to] of patterns) if (re.test(s)) { n.nodeValue = lead + s.replace(re, to); break; }
    }
  }
  fix(doc.body);
  // One observer per tab, owned by the newest copy of this script: an observer dies with the iframe that made it
  // (a language switch reloads the iframe, a page switch replaces it), so a flag alone could leave the tab with a
  // dead one, and what React drew afterwards stayed English.
  try { if (doc.__studioObserver) doc.__studioObserver.disconnect(); } catch (e) {}
  doc.__studioObserver = new MutationObserver(ms => ms.forEach(m => {
    if (m.type === "characterData") fix(m.target.parentNode || m.target);
    m.addedNodes.forEach(fix);
  }));
  doc.__studioObserver.observe(doc.body, {childList: true, subtree: true, characterData: true});
})();
</script>"""


def script(lang: str) -> str:
    def dump(value) -> str:
        return json.dumps(value, ensure_ascii=False)

    return SCRIPT % {"lang": dump(lang), "exact": dump(EXACT), "patterns": dump(PATTERNS), "back": dump(BACK)}


# The iframe's element container would still be a flex item of the page's column: 1 px plus the column's 1 rem gap
# above the page's first widget. Hidden, it takes no place in the layout, and its script runs all the same (a
# display:none iframe is still loaded). A style-only st.html goes to Streamlit's event container, which takes none
# either, and it applies as soon as the iframe is drawn, not once the script has run.
HIDE = '<style>.stElementContainer:has(> iframe[srcdoc*="__studioLang"]) { display: none; }</style>'


def install(lang: str) -> None:
    """Place the script on this page run: it translates Streamlit's sentences in Chinese tabs, and restores them
    after a switch to English. A tab that has only ever been English gets nothing."""
    if lang != "zh" and not st.session_state.get("streamlit_zh.used"):
        return
    st.session_state["streamlit_zh.used"] = True
    st.html(HIDE)
    st.iframe(script(lang), height=1)

