"""The status bar's figures: tokens/s live and measured, speculation, tokens saved; and folded output."""

from tui.session import Stats
from tui.widgets import diff_counts, fold


def test_tokens_per_second_is_estimated_while_streaming_and_measured_when_the_turn_ends():
    stats = Stats(model="m")
    assert stats.line(0.0) == " m │ – tok/s │ accept – │ mean run – │ saved –"
    stats.text("x" * 40, now=10.0)
    stats.text("x" * 40, now=11.0)
    assert "~20.0 tok/s" in stats.line(11.0)  # 80 characters at 4 per token (no turn measured yet) in 1 s
    assert "~10.0 tok/s" in stats.line(12.0)
    stats.turn({"completion_tokens": 50}, now=12.0)
    assert " 25.0 tok/s" in stats.line(12.0) and stats.chars_per_token == 80 / 50
    stats.text("x" * 16, now=20.0)
    assert "~10.0 tok/s" in stats.line(21.0)  # 16 characters at the measured 1.6 per token, in 1 s


def test_speculation_figures_sum_over_turns_and_servers_without_them_show_a_dash():
    stats = Stats(model="m")
    fast = {"drafted": 20, "accepted": 15, "mean_accepted_length": 3.0}
    slow = {"drafted": 20, "accepted": 5, "mean_accepted_length": 1.0}
    stats.turn({"completion_tokens": 30, "speculation": fast}, 1)
    stats.turn({"completion_tokens": 10, "speculation": slow}, 2)
    stats.turn({"completion_tokens": 99}, 3)  # a server that reports no speculation
    line = stats.line(3)
    assert "accept 50%" in line  # 20 of 40 drafted
    assert "mean run 2.00" in line  # 40 tokens over 10 + 10 forwards


def test_tokens_saved_compare_edit_scripts_with_rewriting_the_files_whole():
    stats = Stats(model="m")
    stats.edit({"output_tokens": 10, "whole_file_tokens": 200, "tokens_saved": 190})
    stats.edit({"output_tokens": 5, "whole_file_tokens": None, "tokens_saved": None})  # not counted
    stats.edit({"output_tokens": 30, "whole_file_tokens": 100, "tokens_saved": 70})
    assert stats.line(0).endswith("saved 260 tok (87% vs rewrites)")


def test_long_output_is_folded_to_its_head_and_tail():
    text = "\n".join(f"line {i}" for i in range(1, 501))
    folded = fold(text, limit=10).splitlines()
    head, tail = [f"line {i}" for i in range(1, 6)], [f"line {i}" for i in range(496, 501)]
    assert folded == [*head, "… 490 lines folded …", *tail]
    assert fold("short\noutput") == "short\noutput"
    assert diff_counts("--- a/x\n+++ b/x\n@@ -1 +1,2 @@\n-a\n+b\n+c\n") == (2, 1)
