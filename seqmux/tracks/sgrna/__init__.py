"""sgRNA track: a per-position network for guide activity, with a base-effect map.

Each guide is a fixed-length context (by default 10 nt upstream + 20 nt guide + 3 nt PAM + 10 nt
downstream = 43 nt). Every kept position ``i`` feeds one ReLU neuron with a weight per base,
``s_i = relu(w_i . x_i)`` (``x_i`` the position's one-hot), and a linear head with an intercept
predicts the outcome, ``y = b + sum_i beta_i s_i``; squared loss; plain SGD with step
``lr / sqrt(t + 1)``, one random guide per step (mini-batches as an option).

Modules (this one imports nothing: the workflow imports ``data.check_config`` when it starts):
``data`` (config checks, simulation, reading, encoding, the split), ``model`` (the network, its
file), ``train``, ``evaluate``. Stages (one per rule): ``simulate`` (the default data, from a known
effect map), ``encode`` (checks the user's TSV, one-hot with explicit bases, drops constant
positions, a seeded train / validation / test split that keeps identical sequences and, with
``split.group_column``, each gene on one side),
``train`` (the network, early stopping on the validation MSE), ``evaluate`` (test metrics, base
effects, ridge baseline with its alpha chosen on validation, heatmap).

Conventions: the one-hot tensors follow the package's base order (``seqmux.BASES`` = A, G, C, T:
``[..., 4, P]`` arrays, ``[P, 4]`` weights); the tables and the heatmap written for people have rows
A, C, G, T (the source's layout). Positions are 1-based positions in the input sequence. Every random
draw comes from ``seqmux.seeding`` (track ``"sgrna"``, streams ``simulate``, ``split``, ``train``).
"""
