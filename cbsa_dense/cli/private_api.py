"""The one list of private names of other libraries that cbsa_dense uses, each with where and why.

A private name (a leading underscore, or a private module) may change in any release without notice, so
each one here has no public way to do the same thing; ``tests/test_cli_private_api.py`` checks that every one
still exists in the installed libraries. A module that uses one points here instead of keeping its own list;
a new one is added here (with its reason), or not used.

Lightning
---------

``lightning.pytorch.core.mixins.hparams_mixin._given_hyperparameters``
    :func:`cbsa_dense.tasks.base.under_cli`. A task stores its encoder and head configs as hyper-parameters
    only when LightningCLI instantiates it (the config dicts, which a checkpoint can hold and the CLI can
    replay); built outside the CLI they are modules, which a checkpoint cannot hold and which
    ``save_hyperparameters`` would deep-copy. This context variable, set by LightningCLI while it builds the
    model, is the only signal of which case applies before ``save_hyperparameters`` runs.

``LightningModule._trainer``
    The tasks (:mod:`cbsa_dense.tasks.base`, ``segmentation``, ``detection``) ask whether they are attached
    to a trainer before reading its datamodule or checkpoint path. The public ``trainer`` property raises
    when the module is not attached (a task loaded by :func:`cbsa_dense.load`, a unit test); ``_trainer`` is
    None then.

``lightning.pytorch.callbacks.ModelCheckpoint()._last_global_step_saved``
    :class:`cbsa_dense.callbacks.task_checkpoint.TaskCheckpoint` writes ``last.ckpt`` at a validation whose
    step Lightning did not save (Lightning 2.6 writes ``last.ckpt`` only together with a new best file). This
    attribute is the step ModelCheckpoint last wrote a file at; no public attribute says whether this
    validation's step has been written.

jsonargparse
------------

``jsonargparse._typehints.adapt_class_type`` and ``jsonargparse._typehints.NestedArg``
    :func:`cbsa_dense.cli.null_patch.read_nested_null_as_yaml` wraps the function, process-wide, so that
    ``null`` given on the command line two or more subclass levels deep parses as None (jsonargparse 4.53
    hands it to the inner parser as the text ``None``, a string); ``NestedArg`` is the value it hands on.
    The wrap is the only place to fix this for every argument at once. Before wrapping, it checks that the
    function is the one it was written for (name, signature, the line it works around) and otherwise refuses,
    in one line naming the installed jsonargparse version; ``tests/test_cli_null.py`` says whether a new
    release still needs it.

Other libraries
---------------

``torch.ops.aten._softmax_backward_data``
    :mod:`cbsa_dense.layers.cbsa_attention`: the hand-written backward of the fused CBSA extraction uses
    PyTorch's own softmax gradient kernel (the one autograd uses for ``softmax``), in the accumulation dtype.

``torchvision`` RetinaNet ``regression_head._loss_type``
    :mod:`cbsa_dense.models.heads.det_retinanet`: torchvision's ``RetinaNetHead`` takes no box-loss argument;
    the attribute selects the GIoU box loss.

Replaced by public ways (kept out on purpose)
---------------------------------------------

- LightningCLI's ``_instantiate_trainer``: :class:`~cbsa_dense.callbacks.LogProgress` joins the parsed
  trainer config in ``before_instantiate_classes`` instead
  (:meth:`~cbsa_dense.cli.lightning_cli.CBSADenseCLI._add_log_progress`).
- LightningCLI's ``_parse_ckpt_path`` (its replay of a checkpoint's hyper-parameters) is not overridden:
  the ``--ckpt_path`` is held back from it and put into the parsed config in ``before_instantiate_classes``
  (:mod:`cbsa_dense.cli.stored_run`).
- LightningCLI's ``_subcommand_parsers``: parse errors come back to the CLI through the parsers'
  ``exit_on_error`` argument (``parser_kwargs``).
- jsonargparse's private YAML loader: :func:`cbsa_dense.cli.config_files.parse_yaml` uses the public
  ``get_loader("yaml")``.
- The loggers' ``_version``: the evaluation folder is the loggers' ``version`` argument, set in the config
  before they are built (:func:`cbsa_dense.cli.eval_runs.set_eval_logger_versions`).
"""

#: (library, private name, where it is used) for every entry above; checked by tests/test_cli_private_api.py.
PRIVATE_NAMES = (
    ("lightning", "lightning.pytorch.core.mixins.hparams_mixin._given_hyperparameters", "cbsa_dense.tasks.base"),
    ("lightning", "lightning.pytorch.LightningModule()._trainer", "cbsa_dense.tasks"),
    ("lightning", "lightning.pytorch.callbacks.ModelCheckpoint()._last_global_step_saved",
     "cbsa_dense.callbacks.task_checkpoint"),
    ("jsonargparse", "jsonargparse._typehints.adapt_class_type", "cbsa_dense.cli.null_patch"),
    ("jsonargparse", "jsonargparse._typehints.NestedArg", "cbsa_dense.cli.null_patch"),
    ("torch", "torch.ops.aten._softmax_backward_data", "cbsa_dense.layers.cbsa_attention"),
    ("torchvision", "torchvision.models.detection.retinanet.RetinaNetRegressionHead()._loss_type",
     "cbsa_dense.models.heads.det_retinanet"),
)
