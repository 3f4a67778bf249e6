// A face's quality as the API gives it: a number (the embedding's norm) in older services, or
// an object ({level: "low"|"medium"|"high", reasons: [...], embedding_norm, ...}).

function number(value, digits = 1) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : null;
}

export function qualityElement(quality) {
  const span = document.createElement("span");
  span.className = "quality-wrap";
  const badge = document.createElement("span");
  badge.className = "quality";
  span.append(badge);
  if (quality === null || quality === undefined) {
    badge.textContent = "not measured";
    return span;
  }
  if (typeof quality === "number") {
    badge.textContent = `norm ${number(quality)}`;
    badge.title = "Embedding norm before normalisation: higher is usually a clearer face";
    return span;
  }
  if (typeof quality !== "object") {
    badge.textContent = String(quality);
    return span;
  }
  const level = typeof quality.level === "string" ? quality.level : null;
  const norm = number(quality.embedding_norm);
  badge.textContent = [level, norm !== null ? `norm ${norm}` : null].filter(Boolean).join(" · ") || "measured";
  if (level) badge.classList.add(level.toLowerCase());
  const details = Object.entries(quality)
    .filter(([name, value]) => !["level", "reasons"].includes(name) && typeof value !== "object")
    .map(([name, value]) => `${name.replaceAll("_", " ")}: ${number(value, 3) ?? value}`);
  if (details.length) badge.title = details.join(", ");
  const reasons = Array.isArray(quality.reasons) ? quality.reasons : [];
  if (reasons.length) {
    const list = document.createElement("ul");
    list.className = "reasons";
    for (const reason of reasons) {
      const item = document.createElement("li");
      item.textContent = typeof reason === "string" ? reason.replaceAll("_", " ") : JSON.stringify(reason);
      list.append(item);
    }
    span.append(list);
  }
  return span;
}
