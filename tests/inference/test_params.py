"""GenerationParams: validation of user input, one rule at a time."""

import pytest

from inference import GenerationParams, InferenceError, InvalidParams


def test_it_has_the_documented_defaults():
    params = GenerationParams()
    assert params.to_dict() == {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 1024, "repetition_penalty": 1.05}


def test_it_round_trips_through_a_dict():
    params = GenerationParams(temperature=0, top_p=0.5, max_new_tokens=12, repetition_penalty=1.2)
    assert GenerationParams.from_dict(params.to_dict()) == params


def test_missing_keys_come_from_the_base():
    base = GenerationParams(temperature=0.2, max_new_tokens=64)
    params = GenerationParams.from_dict({"top_p": 0.5}, base=base)
    assert params == GenerationParams(temperature=0.2, top_p=0.5, max_new_tokens=64)


def test_none_gives_the_base():
    base = GenerationParams(max_new_tokens=3)
    assert GenerationParams.from_dict(None, base=base) is base
    assert GenerationParams.from_dict(None) == GenerationParams()


@pytest.mark.parametrize(
    "data",
    [
        {"temperature": 0},
        {"temperature": 2},
        {"temperature": 1},
        {"top_p": 1},
        {"top_p": 0.01},
        {"max_new_tokens": 1},
        {"max_new_tokens": 4096},
        {"repetition_penalty": 1},
        {"repetition_penalty": 2},
    ],
)
def test_it_accepts_the_bounds(data):
    assert GenerationParams.from_dict(data).to_dict().items() >= data.items()


@pytest.mark.parametrize(
    "data, message",
    [
        ({"temperature": -0.01}, "temperature must be between 0 and 2"),
        ({"temperature": 2.01}, "temperature must be between 0 and 2"),
        ({"top_p": 0}, "top_p must be greater than 0 and at most 1"),
        ({"top_p": 1.01}, "top_p must be greater than 0 and at most 1"),
        ({"max_new_tokens": 0}, "max_new_tokens must be between 1 and 4096"),
        ({"max_new_tokens": 4097}, "max_new_tokens must be between 1 and 4096"),
        ({"repetition_penalty": 0.99}, "repetition_penalty must be between 1 and 2"),
        ({"repetition_penalty": 2.5}, "repetition_penalty must be between 1 and 2"),
    ],
)
def test_it_rejects_values_out_of_range(data, message):
    with pytest.raises(InvalidParams) as caught:
        GenerationParams.from_dict(data)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "data, message",
    [
        ({"temperature": True}, "temperature must be a number"),
        ({"temperature": "0.5"}, "temperature must be a number"),
        ({"top_p": None}, "top_p must be a number"),
        ({"top_p": float("nan")}, "top_p must be a number"),
        ({"repetition_penalty": [1.1]}, "repetition_penalty must be a number"),
        ({"max_new_tokens": 12.0}, "max_new_tokens must be an integer"),
        ({"max_new_tokens": "12"}, "max_new_tokens must be an integer"),
        ({"max_new_tokens": False}, "max_new_tokens must be an integer"),
    ],
)
def test_it_rejects_wrong_types(data, message):
    with pytest.raises(InvalidParams) as caught:
        GenerationParams.from_dict(data)
    assert str(caught.value) == message


def test_it_rejects_unknown_keys():
    with pytest.raises(InvalidParams) as caught:
        GenerationParams.from_dict({"temperature": 0.5, "top_k": 40, "seed": 1})
    assert str(caught.value) == "unknown parameter: seed, top_k"


def test_it_rejects_a_non_mapping():
    with pytest.raises(InvalidParams, match="params must be an object"):
        GenerationParams.from_dict([("temperature", 0.5)])


def test_direct_construction_is_validated_too():
    with pytest.raises(InvalidParams, match="temperature"):
        GenerationParams(temperature=3)


def test_invalid_params_is_a_value_error_of_the_package():
    assert issubclass(InvalidParams, ValueError)
    assert issubclass(InvalidParams, InferenceError)


def test_params_are_hashable_and_compare_by_value():
    assert GenerationParams(temperature=0) == GenerationParams(temperature=0.0)
    assert len({GenerationParams(), GenerationParams(), GenerationParams(top_p=0.5)}) == 2


def test_greedy_means_temperature_zero():
    assert GenerationParams(temperature=0).greedy
    assert not GenerationParams(temperature=0.1).greedy
