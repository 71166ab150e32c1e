# PLACEHOLDER: the sgrna track is being built (see issues); replaced by the real rules.

TRACK_FILES["sgrna"] = []


rule sgrna:
    input:
        TRACK_FILES["sgrna"],
