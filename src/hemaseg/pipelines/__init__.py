"""What runs across tasks: ``segment`` (any task, by the model card), ``analyze`` (cells -> WBC crops
-> typing -> counts, differential) and its report."""
