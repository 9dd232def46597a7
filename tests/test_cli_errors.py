"""condense_parse_error: jsonargparse's Union errors on a mistyped --model.* / --data.* option, in one line.

The messages are jsonargparse 4.53's, as `lit-unlearn fit` printed them; tests/test_cli.py runs the real parser.
"""

import pytest

from lit_unlearn.cli_errors import condense_parse_error


def _union(section: str, base: str, class_path: str, inner: str, key: str, value: str) -> str:
    return (
        f'Parser key "{section}":\n'
        "  Does not validate against any of the Union subtypes\n"
        f"  Subtypes: [<class '{base}'>, <class 'NoneType'>]\n"
        "  Errors:\n"
        f"    - Problem with given class_path '{class_path}':\n"
        f"{inner}"
        "    - Expected a <class 'NoneType'>\n"
        "  Given value type: <class 'jsonargparse._util.NestedArg'>\n"
        f"  Given value: NestedArg(key='{key}', val='{value}')"
    )


MODULE = "lightning.pytorch.core.module.LightningModule"
DATA = "lightning.pytorch.core.datamodule.LightningDataModule"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            _union("model", MODULE, "lit_unlearn.WGA", "        Option 'lrr' is not accepted\n", "lrr", "1e-3"),
            # lr is a base class's option, reached through WGA's **kwargs.
            "--model.lrr: lit_unlearn.WGA has no option 'lrr' (did you mean --model.lr?)",
        ),
        (
            _union(
                "data", DATA, "lit_unlearn.TOFUUnlearnDataModule", "        Option 'batch_sise' is not accepted\n",
                "batch_sise", "2",
            ),
            "--data.batch_sise: lit_unlearn.TOFUUnlearnDataModule has no option 'batch_sise' (did you mean "
            "--data.batch_size?)",
        ),
        (
            _union(
                "model", MODULE, "lit_unlearn.WGA",
                "        Parser key \"retain_loss\":\n"
                "          Expected a typing.Literal['none', 'nll', 'kl']. Got value: nl\n",
                "retain_loss", "nl",
            ),
            "--model.retain_loss=nl: expected one of none, nll, kl (did you mean --model.retain_loss=nll?)",
        ),
        (
            _union(
                "model", MODULE, "lit_unlearn.WGA",
                "        Parser key \"beta\":\n          Expected a <class 'float'>. Got value: x\n", "beta", "x",
            ),
            "--model.beta=x: expected float",
        ),
        (
            _union(
                "model", MODULE, "lit_unlearn.WGA",
                "        Parser key \"lr\":\n"
                "          Does not validate against any of the Union subtypes\n"
                "          Subtypes: [<class 'float'>, <class 'NoneType'>]\n"
                "          Errors:\n"
                "            - Expected a <class 'float'>\n"
                "            - Expected a <class 'NoneType'>\n"
                "          Given value type: <class 'str'>\n"
                "          Given value: abc\n",
                "lr", "abc",
            ),
            "--model.lr=abc: expected float or None",
        ),
    ],
)  # fmt: skip
def test_a_union_error_becomes_the_culprit_in_one_line(message: str, expected: str) -> None:
    assert condense_parse_error(message) == expected


def test_only_the_given_class_alternative_is_read() -> None:
    # A callback list also tries lightning.Callback, which accepts no option: its "not accepted" line is not the
    # culprit of a bad value for GEffectCallback's real option.
    message = (
        'Parser key "trainer.callbacks":\n'
        "  Does not validate against any of the Union subtypes\n"
        "  Subtypes: [list[lightning.pytorch.callbacks.callback.Callback], <class "
        "'lightning.pytorch.callbacks.callback.Callback'>, <class 'NoneType'>]\n"
        "  Errors:\n"
        "    - Problem with given class_path 'callbacks.GEffectCallback':\n"
        '        Parser key "every_n_steps":\n'
        "          Expected a <class 'int'>. Got value: x\n"
        "    - Problem with given class_path 'lightning.Callback':\n"
        "        Option 'every_n_steps' is not accepted\n"
        "    - Expected a <class 'NoneType'>\n"
        "  Given value type: <class 'jsonargparse._util.NestedArg'>\n"
        "  Given value: NestedArg(key='every_n_steps', val='x')"
    )
    assert condense_parse_error(message) == "--trainer.callbacks.every_n_steps=x: expected int"


def test_a_plain_option_of_the_wrong_type() -> None:
    message = (
        'Parser key "trainer.max_epochs":\n'
        "  Does not validate against any of the Union subtypes\n"
        "  Subtypes: [<class 'int'>, <class 'NoneType'>]\n"
        "  Errors:\n"
        "    - Expected a <class 'int'>\n"
        "    - Expected a <class 'NoneType'>\n"
        "  Given value type: <class 'str'>\n"
        "  Given value: two"
    )
    assert condense_parse_error(message) == "--trainer.max_epochs=two: expected int or None"


def test_no_suggestion_when_nothing_is_close() -> None:
    message = _union("model", MODULE, "lit_unlearn.WGA", "        Option 'qqqqqq' is not accepted\n", "qqqqqq", "1")
    assert condense_parse_error(message) == "--model.qqqqqq: lit_unlearn.WGA has no option 'qqqqqq'"


@pytest.mark.parametrize(
    "message",
    [
        "unrecognized arguments: --foo=1",
        # A Union error of a shape it does not know: returned whole, never shortened into something misleading.
        _union("model", MODULE, "lit_unlearn.WGA", "        Something new went wrong\n", "x", "1"),
    ],
)
def test_any_other_message_is_left_whole(message: str) -> None:
    assert condense_parse_error(message) == message
