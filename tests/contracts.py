"""Names the tests hold the package to: the final metrics every ``train()`` run reports."""

FINAL_METRICS = (
    "val_acc",
    "test_acc",
    "published_test_acc",
    "test_agreement",
    "test_kl_to_teacher",
    "test_ece",
    "train_acc",
    "train_nc1",
    "teacher_test_acc",
    "teacher_published_test_acc",
    "grad_cos",
    "grad_norm_tckd",
    "grad_norm_nckd",
    "epochs",
    "train_loss",
    "duration_s",
)
