"""Bench and browser test: a page script that records every distinct state of the sidebar's page menu from the
first paint on (window.__navSeen), to catch Streamlit's raw page list flashing before our menu."""

NAV_RECORDER = """
window.__navSeen = [];
new MutationObserver(() => {
  const nav = document.querySelector('[data-testid="stSidebarNav"]');
  const text = nav ? Array.from(nav.querySelectorAll('a')).map(a => a.innerText.trim()).join(' / ') : '';
  const seen = window.__navSeen;
  if (text && seen[seen.length - 1] !== text) seen.push(text);
}).observe(document, {subtree: true, childList: true, characterData: true});
"""
