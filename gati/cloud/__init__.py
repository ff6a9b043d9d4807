"""Running a GATI cluster on cloud machines: the plan (pure), and the AWS calls that carry it out."""
