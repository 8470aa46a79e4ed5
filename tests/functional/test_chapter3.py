"""Chapter 3's claims on the quick profile: the checklist names the right first cause."""

from amhelpers import causes, corpus, diagnose, embedded
from amhelpers import tokenizer as tk


def test_ranked_causes_for_reproduced_failure_and_naive_tokenizer(hornmt_dir, course_home, tmp_path):
    p = embedded.profile("quick")
    run = embedded.finetune(p, embedded.ORIGINAL_FIX)
    new = run["drift"]["tables"]["text_embedding.weight"]["new"]
    assert new["share_below_1pct"] > 0.9  # at 5e-6 the new rows barely move
    assert sum(run["frozen_changed_rows"].values()) > 0  # the hook "freeze" leaks under decay

    report = diagnose.diagnose(run["checkpoint"], run["base_rows"], init_snapshot=run["init"],
                               tokenizer=embedded.extended_tokenizer(p), text="amh", lang="amh",
                               log=f"{run['run_dir']}/train")
    assert report["unk"]["unk_rate"] == 0.0
    assert report["causes"][0]["cause"] == causes.CAUSE_NOT_MOVING

    naive = tmp_path / "naive.model"
    tk.extend(embedded.base_tokenizer(p), corpus.split_lines("amh", "train"), "amh", p.add_vocab,
              naive, naive=True)
    report = diagnose.diagnose(run["checkpoint"], run["base_rows"], init_snapshot=run["init"],
                               tokenizer=naive, text="amh", lang="amh")
    assert report["unk"]["unk_rate"] > 0.05
    assert report["causes"][0]["cause"] == causes.CAUSE_UNK
