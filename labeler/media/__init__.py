"""Images in: what may be fetched from where (:mod:`.fetching`), decoding with limits
(:mod:`.images`) and the store of downloaded bytes (:mod:`.imagestore`)."""
