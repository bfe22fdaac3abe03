"""The teacher as a run sees it (method §4): its fingerprint, the teacher cache, the live or cached source, the demo teacher."""
