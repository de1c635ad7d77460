"""Speech outputs: the decoder a text->audio evaluation needs."""

from __future__ import annotations

import pytest

from sift_cli.apps.speech import output
from sift_cli.errors import SiftError


def test_missing_speech_decoder_is_one_line_with_the_fix() -> None:
    with pytest.raises(SiftError) as error:
        output.load_decoder("glm4voice", "THUDM/glm-4-voice-decoder", "cpu")
    message = str(error.value)
    assert "git clone https://github.com/THUDM/GLM-4-Voice" in message and "\n" not in message
    with pytest.raises(SiftError, match="neither 'glm4voice' nor"):
        output.load_decoder("nonsense", "x", "cpu")
    with pytest.raises(SiftError, match="cannot import speech decoder"):
        output.load_decoder("no_such_package.decoders:make", "x", "cpu")
