"""The robustness and adversarial gate's library.

- `attacks`: FGSM, PGD, APGD, C&W L2 and random noise on (N, 1, T, H, W) tubelets, by threat model;
- `corruptions`: nine thermal corruptions at 5 severities, built on `thermops.camera.sensor`;
- `perspective`: kornia homographies, stability r vs ||grad tau||, worst-case homography;
- `sanity`: checks against gradient masking; `envelope`: the validated envelope;
- `decision`: thresholds and regression against the blessed model; `report`: HTML + PNG;
- `evaluate`: all of the above for one model; `params`: the `gate` params section.

Heavy packages (kornia, captum, matplotlib) are imported inside the functions that use them.
"""
