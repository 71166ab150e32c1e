"""circuitSNP track: chromatin accessibility (open / closed) from motif presence, evaluated against
honest baselines, and SNP scoring (after circuitSNP, Shanku et al.).

Data flow (one package function per workflow step):

- ``features_from_sequence``: windows of the genome (the spine's sampler and held-out chromosomes)
  scanned with JASPAR motifs (the demo genome's planted motifs plus other CORE vertebrate ones) into a
  binary window x motif matrix; labels drawn from a known sparse logistic model (the "true model")
  whose intercept gives the configured closed:open ratio. Written as ``{train,validation,test}.feather``
  in the source format (motif columns named by JASPAR matrix id, ``Y`` = open, ``Y_alt`` = closed).
- ``import_features``: the user's feather files in the source format (features may be strings of
  numbers), checked and written in the same normalised form.
- ``train``: the source's network (Linear(n, 5) - ReLU - Linear(5, 5) - ReLU - Linear(5, 2) - softmax,
  Xavier-uniform weights, BCE on both columns, Adam, full batch), keeping the lowest-validation-loss
  weights; and a scikit-learn logistic regression on the same features.
- ``simulate_vcf``: on the default, SNVs that destroy planted sites of positive-weight motifs and
  background SNVs far from any planted site.
- ``score_snps``: ``logit(p_alt) - logit(p_ref)`` of each SNV from the motif presence of its ref and
  alt windows, with the motifs lost and gained.
- ``evaluate``: BCE, AUROC and average precision on test of the network, the logistic regression,
  the no-skill baseline and (default) the true model; ROC / PR plots.

Modules: ``data`` (the first two steps), ``model``, ``train``, ``evaluate`` (the rest); this one
imports nothing (the workflow imports ``data.check_config`` when it starts). Every random draw
comes from ``seqmux.seeding`` (track ``"circuitsnp"``, streams ``motifs``,
``true_model``, ``labels``, ``vcf``, ``init``).
"""
