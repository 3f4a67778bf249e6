"""1:N identification as the gallery grows: FPIR and FNIR at a fixed threshold and at
`target_fpir`, on synthetic galleries whose score distributions are fitted to the real photos.

Fitting. The shared pack embeds every photo of `../shared/assets/images` (largest face); the
same-person (genuine) and different-person (impostor) cosines of those photos give three
numbers: the genuine mean m_g, the impostor mean m_i and the impostor spread s_i. Synthetic
identities are then unit centres  c = normalise(rho * shared + sqrt(1 - rho^2) * z),  z uniform
on a sphere of d_eff dimensions, and each face is  normalise(c + s * noise), its noise scale s
log-normal around sigma. sigma and the log-normal spread are fitted to the genuine mean and
spread; rho^2 = m_i / m_g and d_eff = ((1 - rho^2) * m_g / s_i)^2 make the synthetic impostor
mean and spread equal the real ones (both faces' noise shrinks them by m_g). It prints both
distributions' quantiles side by side, tails included, so the fit can be judged (the real
impostor tail rests on a few thousand pairs).

For each gallery size N (one enrolled face per identity) it draws strangers (new identities),
mated probes (another face of enrolled identities), and measures:
- at the fixed threshold (the pack's 1:1 default): FPIR (strangers answered with a name) and
  FNIR (mated probes not answered with their own identity);
- at each `target_fpir`: the threshold the service would choose (`service.gallery.fpir`:
  leave-one-identity-out over `--probes` enrolled identities searched as strangers, i.e. the
  same `FpirEstimate.threshold` /identify uses), then FPIR and FNIR measured on fresh probes.
Target: measured FPIR within 2x of target_fpir at every N.

    python bench/identify_at_scale.py                       # 10k, 100k, 1M (a few minutes)
    python bench/identify_at_scale.py --sizes 10000 100000 --strangers 20000
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.faces.pipeline import FacePipeline, PipelineOptions
from service.gallery.fpir import FpirEstimate
from service.packs import load_pack
from service.runtime import RuntimeOptions

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
SUFFIXES = (".jpg", ".jpeg", ".png")
# Query rows multiplied with the gallery at once: bounds the (rows x N) similarity block.
SEARCH_CHUNK = 512


@dataclass(frozen=True)
class Fit:
    genuine_mean: float
    impostor_mean: float
    impostor_sd: float
    sigma: float
    spread: float  # log-normal spread of each face's noise scale (fits the genuine spread)
    rho: float
    d_eff: int
    dim: int


def real_scores(pack_dir: Path, image_dirs: list[Path]) -> tuple[np.ndarray, np.ndarray, int]:
    """Genuine and impostor cosines of the largest face of every photo (a person = a folder)."""
    pipeline = FacePipeline.from_pack(load_pack(pack_dir), PipelineOptions(), RuntimeOptions())
    embeddings, owners = [], []
    for root in image_dirs:
        for person in sorted(
            p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")
        ):
            for photo in sorted(person.iterdir()):
                if photo.suffix.lower() not in SUFFIXES:
                    continue
                faces = pipeline.analyze(photo.read_bytes(), faces="largest").faces
                if faces:
                    embeddings.append(faces[0].embedding)
                    owners.append(f"{root.name}/{person.name}")
    vectors, owners = np.stack(embeddings), np.array(owners)
    scores = vectors @ vectors.T
    rows, cols = np.triu_indices(len(vectors), k=1)
    same = owners[rows] == owners[cols]
    pipeline.close()
    return scores[rows, cols][same], scores[rows, cols][~same], vectors.shape[1]


def _genuine_moments(sigma: float, spread: float, rng: np.random.Generator) -> tuple[float, float]:
    """Mean and sd of 1 / sqrt((1 + s_a^2)(1 + s_b^2)), s = sigma * lognormal(spread)."""
    scales = sigma * np.exp(spread * rng.standard_normal((2, 20_000)) - spread**2 / 2)
    scores = 1 / np.sqrt((1 + scales[0] ** 2) * (1 + scales[1] ** 2))
    return float(scores.mean()), float(scores.std())


def fit(genuine: np.ndarray, impostor: np.ndarray, dim: int) -> Fit:
    m_g, m_i, s_i = float(genuine.mean()), float(impostor.mean()), float(impostor.std())
    rng = np.random.default_rng(0)
    best = (np.inf, 0.0, 0.0)
    for sigma in np.linspace(0.2, 1.5, 27):  # match the genuine mean and spread
        for spread in np.linspace(0.0, 1.5, 16):
            mean, sd = _genuine_moments(sigma, spread, rng)
            error = (mean - m_g) ** 2 + (sd - float(genuine.std())) ** 2
            best = min(best, (error, float(sigma), float(spread)))
    _, sigma, spread = best
    rho2 = min(max(m_i / m_g, 0.0), 0.5)
    d_eff = int(np.clip(round(((1 - rho2) * m_g / s_i) ** 2), 4, dim))
    return Fit(m_g, m_i, s_i, sigma, spread, float(np.sqrt(rho2)), d_eff, dim)


class Population:
    """Synthetic identities drawn the fitted way; `faces(centres)` gives one face of each."""

    def __init__(self, shape: Fit, seed: int) -> None:
        self.fit = shape
        self.rng = np.random.default_rng(seed)
        shared = np.zeros(shape.dim, np.float32)
        shared[0] = 1.0
        self.shared = shared

    def centres(self, count: int) -> np.ndarray:
        out = np.empty((count, self.fit.dim), np.float32)
        for start in range(0, count, 100_000):
            n = min(100_000, count - start)
            z = np.zeros((n, self.fit.dim), np.float32)
            z[:, 1 : 1 + self.fit.d_eff] = self.rng.standard_normal((n, self.fit.d_eff))
            z /= np.linalg.norm(z, axis=1, keepdims=True)
            block = self.fit.rho * self.shared + np.sqrt(1 - self.fit.rho**2) * z
            out[start : start + n] = block / np.linalg.norm(block, axis=1, keepdims=True)
        return out

    def faces(self, centres: np.ndarray) -> np.ndarray:
        out = np.empty_like(centres)
        for start in range(0, len(centres), 100_000):
            block = centres[start : start + 100_000]
            noise = self.rng.standard_normal(block.shape).astype(np.float32)
            spread = self.fit.spread
            scale = self.fit.sigma * np.exp(
                spread * self.rng.standard_normal((len(block), 1)) - spread**2 / 2
            )
            faces = block + scale.astype(np.float32) * noise / np.sqrt(self.fit.dim)
            out[start : start + len(block)] = faces / np.linalg.norm(faces, axis=1, keepdims=True)
        return out


def top2(gallery: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best two (index, similarity) per query, exact (the service's flat search)."""
    indices = np.empty((len(queries), 2), np.int64)
    scores = np.empty((len(queries), 2), np.float32)
    for start in range(0, len(queries), SEARCH_CHUNK):
        block = queries[start : start + SEARCH_CHUNK] @ gallery.T
        part = np.argpartition(-block, 1, axis=1)[:, :2]
        values = np.take_along_axis(block, part, axis=1)
        order = np.argsort(-values, axis=1)
        indices[start : start + len(block)] = np.take_along_axis(part, order, axis=1)
        scores[start : start + len(block)] = np.take_along_axis(values, order, axis=1)
    return indices, scores


def quantiles(values: np.ndarray) -> str:
    points = np.quantile(values, [0.01, 0.5, 0.99, 0.999]) if len(values) else [np.nan] * 4
    return " ".join(f"{p:6.3f}" for p in points) + f"  max {values.max():6.3f}"


def run_size(size: int, population: Population, args: argparse.Namespace) -> list[dict]:
    started = time.perf_counter()
    centres = population.centres(size)
    gallery = population.faces(centres)
    # Leave one identity out, as the service measures it: enrolled faces searched as strangers.
    probes = population.rng.choice(size, min(args.probes, size), replace=False)
    index, score = top2(gallery, gallery[probes])
    loo = np.where(index[:, 0] == probes, score[:, 1], score[:, 0]).astype(np.float64)
    estimate = FpirEstimate(
        gallery_size=size, faces=size, stranger_scores=loo, pair_scores=np.zeros(0)
    )
    strangers = population.faces(population.centres(args.strangers))
    _, stranger_best = top2(gallery, strangers)
    mated_ids = population.rng.choice(size, min(args.mated, size), replace=False)
    mated_index, mated_score = top2(gallery, population.faces(centres[mated_ids]))
    hit = mated_index[:, 0] == mated_ids
    rows = []
    chosen = [("fixed", args.threshold, "")]
    for target in args.targets:
        found = estimate.threshold(target)
        chosen.append(
            (
                f"fpir {target:g}",
                found.threshold,
                f"{found.fpir:.2g} [{found.fpir_low:.2g}, {found.fpir_high:.2g}]",
            )
        )
    for label, threshold, estimated in chosen:
        fpir = float(np.mean(stranger_best[:, 0] >= threshold))
        fnir = float(np.mean(~(hit & (mated_score[:, 0] >= threshold))))
        rows.append(
            {
                "N": size,
                "threshold": label,
                "value": round(float(threshold), 4),
                "estimated FPIR": estimated,
                "measured FPIR": fpir,
                "FNIR": fnir,
            }
        )
    print(f"  N={size}: {time.perf_counter() - started:.0f} s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pack", type=Path, default=ASSETS / "models" / "scrfd500m_mbf128")
    parser.add_argument(
        "--images",
        type=Path,
        nargs="+",
        default=[ASSETS / "images" / "deepface", ASSETS / "images" / "face_recognition"],
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--targets", type=float, nargs="+", default=[1e-2, 1e-3])
    parser.add_argument(
        "--probes", type=int, default=10_000, help="identities searched as strangers"
    )
    parser.add_argument("--strangers", type=int, default=10_000, help="fresh strangers per size")
    parser.add_argument("--mated", type=int, default=2_000, help="mated probes per size")
    parser.add_argument("--threshold", type=float, help="fixed threshold (default: the pack's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    if args.threshold is None:
        args.threshold = load_pack(args.pack).manifest.threshold

    genuine, impostor, dim = real_scores(args.pack, args.images)
    shape = fit(genuine, impostor, dim)
    population = Population(shape, args.seed)
    sample_c = population.centres(400)
    sample_a, sample_b = population.faces(sample_c), population.faces(sample_c)
    synthetic_genuine = np.sum(sample_a * sample_b, axis=1)
    other = population.faces(population.centres(400))
    synthetic_impostor = (sample_a @ other.T).ravel()
    print(
        f"fit on {len(genuine)} genuine / {len(impostor)} impostor real pairs: sigma "
        f"{shape.sigma:.3f} (spread {shape.spread:.2f}), rho {shape.rho:.3f}, "
        f"d_eff {shape.d_eff} of {shape.dim}"
    )
    print("                         p1    median   p99   p99.9")
    print(f"  real genuine       {quantiles(genuine)}")
    print(f"  synthetic genuine  {quantiles(synthetic_genuine)}")
    print(f"  real impostor      {quantiles(impostor)}")
    print(f"  synthetic impostor {quantiles(synthetic_impostor)}")

    rows = list(itertools.chain.from_iterable(run_size(n, population, args) for n in args.sizes))
    print("\n| N | threshold | value | estimated FPIR [95%] | measured FPIR | ratio | FNIR |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        target = row["threshold"].removeprefix("fpir ")
        ratio = f"{row['measured FPIR'] / float(target):.2f}" if row["threshold"] != "fixed" else ""
        print(
            f"| {row['N']:,} | {row['threshold']} | {row['value']:.4f} | {row['estimated FPIR']} "
            f"| {row['measured FPIR']:.4f} | {ratio} | {row['FNIR']:.4f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
