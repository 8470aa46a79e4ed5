"""Chapter 3's claims on the quick profile: the checklist names the right first cause, each
run diagnosed on its own checkpoint, training log and tokenizer."""

from amhelpers import causes, diagnose, embedded


def test_ranked_causes_for_reproduced_failure_and_naive_tokenizer(hornmt_dir, course_home):
    p = embedded.profile("quick")
    run = embedded.finetune(p, embedded.ORIGINAL_FIX)
    new = run["drift"]["tables"]["text_embedding.weight"]["new"]
    assert new["share_below_1pct"] > 0.9  # at 5e-6 the new rows barely move
    assert sum(run["frozen_changed_rows"].values()) > 0  # the hook "freeze" leaks under decay

    report = diagnose.diagnose(run["checkpoint"], run["base_rows"], init_snapshot=run["init"],
                               tokenizer=run["tokenizer"], text="amh", lang="amh",
                               log=f"{run['run_dir']}/train")
    assert report["unk"]["unk_rate"] == 0.0
    assert report["causes"][0]["cause"] == causes.CAUSE_NOT_MOVING

    # The team's trainer on a naive extension (single characters dropped): its own run.
    naive = embedded.finetune(p, embedded.ORIGINAL_NAIVE)
    assert naive["tokenizer"] != run["tokenizer"] and naive["rows"] < run["rows"]
    report = diagnose.diagnose(naive["checkpoint"], naive["base_rows"], init_snapshot=naive["init"],
                               tokenizer=naive["tokenizer"], text="amh", lang="amh",
                               log=f"{naive['run_dir']}/train")
    assert report["unk"]["unk_rate"] > 0.05
    assert report["causes"][0]["cause"] == causes.CAUSE_UNK
