# PLACEHOLDER: the scrna track is being built (see issues); replaced by the real rules.

TRACK_FILES["scrna"] = []


rule scrna:
    input:
        TRACK_FILES["scrna"],
