// The playground page: reads config.json (target, labels, the QA-flag guide), wires the two views, and keeps
// its state on window.fusionEmotion for automated checks: lastResult, timeline, updates, status, error.

import { setUpFileView } from "./file.js";
import { LiveView } from "./live.js";

const state = { lastResult: null, timeline: [], updates: [], status: "idle", error: null };
window.fusionEmotion = state;

// Tabs with a roving tabindex: Left/Right (and Home/End) move between them, as the ARIA tabs pattern has it.
function setUpTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const select = (tab) => {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      document.getElementById(t.getAttribute("aria-controls")).hidden = !on;
    }
    tab.focus();
  };
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[event.key];
      if (to === undefined) return;
      event.preventDefault();
      select(tabs[(to + tabs.length) % tabs.length]);
    });
  });
}

async function main() {
  let config;
  try {
    const resp = await fetch("./config.json");
    config = await resp.json();
  } catch (err) {
    state.status = "error";
    state.error = `The page's settings could not be read: ${err.message}`;
    document.getElementById("target").textContent = state.error;
    return;
  }
  document.getElementById("target").textContent = config.target;
  setUpTabs();
  setUpFileView(config, state);
  new LiveView(config, state).bind();
  document.body.dataset.ready = "true";
}

main();
