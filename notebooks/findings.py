"""Prose findings for the notebooks, written after looking at the committed toy-model results
(results/*/runs.parquet, 2026-11-25). build_notebooks.py puts them in the last cell; the
numbers above them in each notebook are computed live from the same tables."""

FINDINGS = {
    "01": """## Findings (toy model, CPU)

- **Naive tiles leave a seam at every window edge**: structural seam score 6.80 (1 = seamless;
  the p95 on seamless photographs is 1.20).
- **16 px of overlap (1/8 of the 128 px window) removes most of it**: uniform weights 1.27,
  gaussian weights 1.12, for 1.48x the model evaluations (2850 vs 1920).
- The per-pixel step score `seam_score` reads 1.00 / 0.90 / 0.88 for the three images: the VAE
  decoder blurs a tile boundary over ~8 px, so these seams are structural (content stops
  matching), not brightness steps. That is why `seam_structure` is the headline score
  (docs/metrics.md).""",
    "02": """## Findings (toy model, CPU; 3 seeds per cell)

- **Any overlap beats none by far**: 6.93 at 0 px, 1.15-1.75 for every kernel at 16-64 px.
- **Centre-weighted kernels beat plain averaging at every overlap**: mean over overlaps > 0,
  cosine 1.23, linear 1.32, gaussian 1.33, seed_gaussian 1.39, uniform 1.67. Uniform averaging
  gets *worse* as overlap grows (1.40 at 16 px, 1.96 at 64 px): more inconsistent views are
  averaged with a hard change of weight at each view edge. Cosine at 64 px (1.10) is within the
  seamless range.
- **Seams are not monotone in overlap** for any kernel: 32 px is worse than 16 px (gaussian 1.51
  vs 1.21), with a large seed spread (+-0.46). More overlap is not automatically better.
- **Cost** grows with overlap: 1080 model evaluations at 16 px, 1800 at 64 px (1.67x).
- **View disagreement** (weighted variance of overlapping predictions, mean over steps) is
  lowest for cosine (0.0096) and highest for uniform (0.028): the kernels that disagree less
  leave weaker seams.
- **Frontier**: diffusers' default plan (uniform weights, stride 1/8 of the window) scores 1.01
  at 9000 evaluations; cosine at 64 px overlap scores 0.97 with 840 evaluations, **10.7x fewer**,
  and gaussian / linear reach 1.11-1.14 at 840.""",
    "03": """## Findings (toy model, CPU; 2 seeds)

- At a fixed 0.26 MP, 1:4 and 4:1 need 1320 model evaluations, 1:2 and 2:1 need 1280, the
  square 1000: the extremes cost 1.32x the square, but moderate ratios already cost 1.28x.
  Cost follows how each axis divides into windows (redundancy 1.56 for the square, 2.00-2.06
  otherwise), not the ratio itself.
- **Wide and tall cost exactly the same** (ratio 1.00); seam scores are 1.12-1.21 at every
  ratio, with no trend.""",
    "04": """## Findings (toy model, CPU, 1 thread per run)

- From one window (128^2 px) to 16x its area (512^2 px): 25x the views and model evaluations
  (1 -> 25 views; overlap makes the count exceed the area ratio), 10.7x the denoising time and
  12.4x the total time (batching makes larger canvases cheaper per evaluation).
- Peak resident memory barely moves with the toy model at these sizes (1.16 -> 1.23 GB while
  denoising, 1.17 -> 1.47 GB while decoding; most of it is the process and the model).
- **VAE decode** (benchmark, toy VAE, 512 px network input per tile, overlap 64; docs/vae.md):
  the full decode's extra memory grows 15.7x from 1024^2 to 4096^2 (912 MB -> 14.4 GB).
  mdtools' tiled decode without sync stays at 196-369 MB (output canvas included), below
  diffusers' tiling (252-655 MB). With GroupNorm sync and canvas-wide attention it equals
  the full decode to float noise (128.5 dB PSNR; diffusers' tiling 15.0 dB). The `park`
  strategy does that in one pass but holds every tile's activations (15.6 GB at 4096^2);
  `recompute` holds one tile (208 / 248 MB at 1024^2 / 2048^2) at ~7-12x the time.
- **Engine overhead**: mdtools' whole call takes 0.99x the time of the bare UNet forwards it
  needs and 0.99x diffusers' panorama pipeline, with latents equal to 7.6e-6; the recorder
  costs nothing measurable (on/off 0.99).""",
    "05": """## Summary

| claim | verdict on the toy model |
|---|---|
| C1 overlap | holds approximately: 0 px leaves strong seams (6.93), 1/8 window is at the edge of seamless (1.21 vs 1.20), more overlap does not help and costs up to 1.67x |
| C2 blending | holds: cosine 1.23, gaussian 1.33 vs uniform 1.67 (and uniform worsens with overlap) |
| C3 cost | does not hold: 16x the area costs 12.4x the time (25x the evaluations), not 4-6x |
| C4 memory | holds in shape: the full decode's memory grows 15.7x from 1024^2 to 4096^2, the bounded tiled decode 1.9x with its output canvas (0.96x without); the GB figures need a GPU run |
| C5 aspect | holds only partly: extremes cost 1.32x the square, 1:2 already 1.28x; wide = tall |
| C6 global pass | does not hold here: no consistent gain (brick: worse colour consistency, stars: better, both within the seed spread) |

Not tested: SDXL at non-native aspect ratios (no SDXL weights on a CPU machine). Every number
comes from a 128 px-window model trained on seven textures; the recipes in
`experiments/gpu/*_sd21.yaml` repeat each sweep on SD 2.1 base.""",
}
