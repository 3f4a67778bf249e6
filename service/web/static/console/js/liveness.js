// A face's liveness verdict as the API gives it ({score, live, threshold, model}): a badge
// that says "live" or "possible attack" with the score, and the rule behind it on hover.

export function livenessElement(liveness) {
  const badge = document.createElement("span");
  badge.className = "liveness";
  badge.dataset.testid = "liveness";
  if (!liveness || typeof liveness !== "object" || typeof liveness.score !== "number") {
    badge.textContent = "not checked";
    return badge;
  }
  const live = liveness.live === true;
  badge.classList.add(live ? "live" : "attack");
  badge.textContent = `${live ? "live" : "possible attack"} · ${liveness.score.toFixed(3)}`;
  const threshold = typeof liveness.threshold === "number" ? liveness.threshold : null;
  badge.title =
    (threshold === null ? "" : `Live when the score is at least ${threshold}. `) +
    "A single-photo check: it catches many prints and screens, not every attack" +
    (liveness.model ? ` (models ${liveness.model}).` : ".");
  return badge;
}
