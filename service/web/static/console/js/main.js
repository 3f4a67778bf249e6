// The console's entry point: pages behind the #hash, and the API key prompt.

import { apiKey, setApiKey } from "./api.js";
import { refreshList, setupGallery } from "./gallery.js";
import { setupIdentify } from "./identify.js";
import { setupReport } from "./report.js";
import { loadStatus } from "./status.js";
import { showNotice } from "./ui.js";
import { setupVerify } from "./verify.js";

const PAGES = ["verify", "identify", "gallery", "status"];
const ON_SHOW = { gallery: refreshList, status: loadStatus };

function currentPage() {
  const name = location.hash.replace("#", "");
  return PAGES.includes(name) ? name : "verify";
}

function show(name, { focus = false } = {}) {
  for (const section of document.querySelectorAll("[data-page]")) section.hidden = section.dataset.page !== name;
  for (const link of document.querySelectorAll("[data-page-link]")) {
    if (link.dataset.pageLink === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · faceverify console`;
  showNotice("");
  ON_SHOW[name]?.();
  if (focus) document.querySelector(`#page-${name} h1`)?.focus({ preventScroll: true });
}

function setupKeys() {
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  const message = document.getElementById("key-message");
  const button = document.getElementById("key-button");

  function ask(text) {
    message.textContent = text;
    input.value = "";
    if (!dialog.open) dialog.showModal();
    input.focus();
  }

  window.addEventListener("faceverify:unauthorized", () => {
    button.hidden = false;
    if (apiKey()) {
      setApiKey(null);
      ask("The service did not accept that API key. Enter a valid one.");
      showNotice("The API key was not accepted; enter a valid one to continue.");
    } else {
      ask("This service needs an API key. It is kept in this tab only (never saved to disk) and sent with each request.");
      showNotice("An API key is needed to use this service.");
    }
  });
  document.getElementById("key-form").addEventListener("submit", () => {
    setApiKey(input.value.trim());
    showNotice("");
    show(currentPage());
  });
  document.getElementById("key-cancel").addEventListener("click", () => dialog.close());
  button.addEventListener("click", () => ask("Enter the API key to use in this tab."));
  if (apiKey()) button.hidden = false;
}

document.addEventListener("DOMContentLoaded", () => {
  for (const heading of document.querySelectorAll("[data-page] h1")) heading.tabIndex = -1;
  setupKeys();
  setupVerify();
  setupIdentify();
  setupGallery();
  setupReport();
  window.addEventListener("hashchange", () => show(currentPage(), { focus: true }));
  show(currentPage());
  // Learn early whether keys are needed: the status answer says so, a 401 opens the prompt.
  if (!ON_SHOW[currentPage()]) loadStatus().then((status) => {
    if (status?.api_keys) document.getElementById("key-button").hidden = false;
  });
});
