// Gallery page: people (identities) page by page, search, create, rename, enrol photos, delete.

import { photoForm, request } from "./api.js";
import { errorElement } from "./messages.js";
import { clearCanvas, drawFaces, dropZone, forgetImage, loadImage } from "./photo.js";
import { qualityElement } from "./quality.js";
import { confirmAction, element, fixed, formatDate, showNotice } from "./ui.js";

const PAGE_SIZE = 20;
// Search runs in the browser over the list the API pages out (GET /identities has no name
// filter): at most this many people are searched, and the page says so when there are more.
const SEARCH_PAGE = 1000;
const SEARCH_LIMIT = 10_000;

const state = { offset: 0, query: "", selected: null, searched: null };

export function setupGallery() {
  document.getElementById("create-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("create-name");
    try {
      const created = await request("identities", { method: "POST", body: { name: input.value.trim(), metadata: {} } });
      input.value = "";
      showNotice(`Created ${created.name}. Add a photo of them to enrol their face.`, "info");
      state.query = "";
      document.getElementById("search-name").value = "";
      await refreshList();
      await openIdentity(created.id);
    } catch (error) {
      showNotice(errorElement(error, "Could not create"));
    }
  });
  document.getElementById("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.query = document.getElementById("search-name").value.trim();
    state.offset = 0;
    state.searched = null;
    refreshList();
  });
  document.getElementById("page-prev").addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - PAGE_SIZE);
    refreshList();
  });
  document.getElementById("page-next").addEventListener("click", () => {
    state.offset += PAGE_SIZE;
    refreshList();
  });
}

async function searchAll(query) {
  const wanted = query.toLowerCase();
  const found = [];
  let total = 0;
  for (let offset = 0; offset < SEARCH_LIMIT; offset += SEARCH_PAGE) {
    const page = await request(`identities?limit=${SEARCH_PAGE}&offset=${offset}`);
    total = page.total;
    found.push(...page.items.filter((item) => item.name.toLowerCase().includes(wanted)));
    if (offset + SEARCH_PAGE >= page.total) break;
  }
  return { items: found, truncated: total > SEARCH_LIMIT };
}

async function page() {
  if (!state.query) {
    const answer = await request(`identities?limit=${PAGE_SIZE}&offset=${state.offset}`);
    return { items: answer.items, total: answer.total, note: "" };
  }
  state.searched ??= await searchAll(state.query);
  const { items, truncated } = state.searched;
  return {
    items: items.slice(state.offset, state.offset + PAGE_SIZE),
    total: items.length,
    note: truncated ? ` (searched the first ${SEARCH_LIMIT} people only)` : "",
  };
}

export async function refreshList() {
  const body = document.querySelector("#identity-table tbody");
  const info = document.getElementById("page-info");
  try {
    const { items, total, note } = await page();
    if (state.offset >= total && total > 0) {
      state.offset = Math.max(0, Math.floor((total - 1) / PAGE_SIZE) * PAGE_SIZE);
      return refreshList();
    }
    const rows = items.map((item) => {
      const open = element("button", { type: "button", class: "link" }, item.name);
      open.addEventListener("click", () => openIdentity(item.id));
      return element(
        "tr",
        { class: item.id === state.selected ? "selected" : null, "data-identity": item.id },
        element("td", {}, open),
        element("td", { class: "num" }, String(item.face_count)),
        element("td", {}, formatDate(item.created_at)),
      );
    });
    if (!rows.length) {
      const text = state.query ? `Nobody named like "${state.query}".` : "Nobody yet: create a person above.";
      rows.push(element("tr", {}, element("td", { colspan: "3", class: "hint" }, text)));
    }
    body.replaceChildren(...rows);
    const first = total ? state.offset + 1 : 0;
    info.textContent = `${first}–${state.offset + items.length} of ${total}${state.query ? " found" : ""}${note}`;
    document.getElementById("page-prev").disabled = state.offset === 0;
    document.getElementById("page-next").disabled = state.offset + PAGE_SIZE >= total;
  } catch (error) {
    body.replaceChildren(element("tr", {}, element("td", { colspan: "3" }, errorElement(error))));
    info.textContent = "";
  }
  refreshCounts();
}

async function refreshCounts() {
  const counts = document.getElementById("gallery-counts");
  try {
    const status = await request("status");
    counts.textContent = `${status.gallery.identities} people · ${status.gallery.faces} enrolled faces`;
  } catch {
    counts.textContent = "\u00a0";
  }
}

export async function openIdentity(id) {
  state.selected = id;
  for (const row of document.querySelectorAll("#identity-table tbody tr")) {
    row.classList.toggle("selected", row.dataset.identity === id);
  }
  const detail = document.getElementById("identity-detail");
  let identity;
  try {
    identity = await request(`identities/${encodeURIComponent(id)}`);
  } catch (error) {
    detail.replaceChildren(errorElement(error));
    return;
  }
  detail.replaceChildren(...identityView(identity));
}

function identityView(identity) {
  const heading = element("h2", { id: "identity-name" }, identity.name);
  const rename = element(
    "form",
    { class: "inline-form" },
    element("label", { for: "rename-input" }, "Name"),
    element("input", { id: "rename-input", required: true, maxlength: "200", value: identity.name, autocomplete: "off" }),
    element("button", { type: "submit" }, "Rename"),
  );
  rename.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = rename.querySelector("input").value.trim();
    try {
      const updated = await request(`identities/${identity.id}`, { method: "PATCH", body: { name } });
      showNotice(`Renamed to ${updated.name}.`, "info");
      state.searched = null;
      document.getElementById("identity-detail").replaceChildren(...identityView(updated));
      refreshList();
    } catch (error) {
      showNotice(errorElement(error, "Could not rename"));
    }
  });

  const faces = element("div", { class: "faces" });
  renderFaces(faces, identity);

  const inputId = `enrol-file-${identity.id}`;
  const drop = element(
    "label",
    { class: "drop", for: inputId },
    element("span", { class: "drop-title" }, "Add a photo"),
    element("span", { class: "drop-hint" }, "Drop a photo of this person here, or press to choose one"),
    element("input", { type: "file", id: inputId, accept: "image/*", class: "file-input" }),
  );
  const canvas = element("canvas", { class: "photo", width: "800", height: "600", role: "img", "aria-label": "No photo enrolled yet" });
  clearCanvas(canvas, "No photo enrolled yet", "No photo added yet");
  const enrolInfo = element("div", { class: "face-info", "aria-live": "polite" });
  let image = null;
  dropZone(drop, drop.querySelector("input"), async (file) => {
    enrolInfo.replaceChildren(element("p", { class: "hint" }, "Enrolling…"));
    forgetImage(image);
    image = await loadImage(file);
    drawFaces(canvas, image, { label: `${file.name}: enrolling` });
    try {
      const face = await request(`identities/${identity.id}/faces`, { method: "POST", body: photoForm(file) });
      drawFaces(canvas, image, { faces: [face], highlight: [0], label: `${file.name}: the enrolled face is boxed` });
      enrolInfo.replaceChildren(
        element("p", { "data-testid": "enrolled" }, "Enrolled the boxed face. Quality ", qualityElement(face.quality), `, detection score ${fixed(face.score)}.`),
      );
      renderFaces(faces, await request(`identities/${identity.id}`));
      refreshList();
    } catch (error) {
      drawFaces(canvas, image, { label: `${file.name}: not enrolled` });
      enrolInfo.replaceChildren(errorElement(error, "Not enrolled"));
    }
  });

  const remove = element("button", { type: "button", class: "danger" }, `Delete ${identity.name}`);
  remove.addEventListener("click", async () => {
    const sure = await confirmAction(
      `Delete ${identity.name} and erase all ${identity.faces.length} of their enrolled faces? This cannot be undone.`,
      "Delete person",
    );
    if (!sure) return;
    try {
      await request(`identities/${identity.id}`, { method: "DELETE" });
      showNotice(`Deleted ${identity.name}.`, "info");
      state.selected = null;
      state.searched = null;
      document.getElementById("identity-detail").replaceChildren(element("p", { class: "placeholder" }, "Choose a person to see their faces, rename them or add photos."));
      refreshList();
    } catch (error) {
      showNotice(errorElement(error, "Could not delete"));
    }
  });

  return [heading, rename, faces, element("div", { class: "enrolled" }, drop, canvas, enrolInfo), element("div", { class: "actions" }, remove)];
}

function renderFaces(container, identity) {
  if (!identity.faces.length) {
    container.replaceChildren(element("p", { class: "hint" }, "No enrolled face yet."));
    return;
  }
  const rows = identity.faces.map((face, index) => {
    const remove = element("button", { type: "button", class: "quiet", "aria-label": `Delete face ${index + 1} of ${identity.name}` }, "Delete");
    remove.addEventListener("click", async () => {
      if (!(await confirmAction(`Delete face ${index + 1} of ${identity.name}? It is erased for good.`, "Delete face"))) return;
      try {
        await request(`identities/${identity.id}/faces/${face.face_id}`, { method: "DELETE" });
        renderFaces(container, await request(`identities/${identity.id}`));
        refreshList();
      } catch (error) {
        showNotice(errorElement(error, "Could not delete the face"));
      }
    });
    return element(
      "tr",
      {},
      element("td", {}, String(index + 1)),
      element("td", {}, qualityElement(face.quality)),
      element("td", { class: "num" }, fixed(face.det_score)),
      element("td", {}, face.current_model ? "current" : `other model (${face.model})`),
      element("td", {}, formatDate(face.created_at)),
      element("td", {}, remove),
    );
  });
  container.replaceChildren(
    element(
      "table",
      {},
      element("caption", { class: "visually-hidden" }, `Enrolled faces of ${identity.name}`),
      element(
        "thead",
        {},
        element("tr", {}, ...["#", "Quality", "Detection", "Model", "Added", "Action"].map((h) => element("th", { scope: "col" }, h))),
      ),
      element("tbody", {}, ...rows),
    ),
  );
}
