"""The build pipeline: extract, fit, score, profile, optimise, calibrate and certify, write a bundle;
and the commands that revise a bundle from its stored scores (retarget, re-plan, compact)."""
