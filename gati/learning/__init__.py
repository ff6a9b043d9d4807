"""Learning while serving: live agreement guarantees, the fallback rule, and what retrains the caches."""
