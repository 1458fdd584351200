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

# Exact sentences of Streamlit 1.67's frontend (checked against .venv's static bundle by tests/test_streamlit_zh.py),
# and a pattern for the uploader's size line ("200MB per file • JSON, JSONL").
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
}
PATTERNS = [(r"^(\d+(?:\.\d+)?\s*[KMG]?B) per file", "单个文件不超过 $1")]
BACK = [(r"^单个文件不超过 (\S+)", "$1 per file")]

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
      if (el && el.closest(USER_TEXT) && !el.closest("button")) continue;  // never rewrite the user's own words
      const s = n.nodeValue.trim();
      if (!s) continue;
      if (exact[s] !== undefined) { n.nodeValue = exact[s]; continue; }
      for (const [re, to] of patterns) if (re.test(s)) { n.nodeValue = s.replace(re, to); break; }
    }
  }
  fix(doc.body);
  if (doc.__studioObserver) return;  // one observer per tab, however many page runs place this script
  doc.__studioObserver = true;
  new MutationObserver(ms => ms.forEach(m => {
    if (m.type === "characterData") fix(m.target.parentNode || m.target);
    m.addedNodes.forEach(fix);
  })).observe(doc.body, {childList: true, subtree: true, characterData: true});
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

