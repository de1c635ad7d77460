"""GLM-4-Voice's prompt format."""

from __future__ import annotations

from speech_data import speech_tokenizer_and_model

from sift_cli.apps.speech import prompts


def test_glm_prompt_format_matches_glm_4_voice() -> None:
    tokenizer, _, _ = speech_tokenizer_and_model()
    assert prompts.resolve_format(tokenizer, "auto") == "chat"
    tokenizer.add_tokens(list(prompts.GLM_ROLES), special_tokens=True)
    assert prompts.resolve_format(tokenizer, "auto") == "glm4voice"
    ids = prompts.prompt_ids(tokenizer, "glm4voice", "audio", prompts.user_content({"instruction_speech": [7, 8]}, "audio"))
    system = prompts.system_prompt("audio")
    assert system.endswith("with 13 text token followed by 26 audio tokens. ")
    expected = f"<|system|>\n{system}<|user|>\n<|begin_of_audio|><|audio_7|><|audio_8|><|end_of_audio|><|assistant|>streaming_transcription\n"
    assert tokenizer.decode(ids) == expected
    assert prompts.end_of_reply(tokenizer, "glm4voice") == tokenizer.convert_tokens_to_ids("<|user|>")
    assert prompts.system_prompt("text").startswith("User will provide you with a text instruction.")
