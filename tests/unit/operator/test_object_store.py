"""The operator's watch-fed cache: newer wins, deletions stay deleted, jobs' children are one lookup."""

from __future__ import annotations

from typing import Any

import pytest
from kiln_operator.caches import CACHED_KINDS, OperatorCaches
from kiln_operator.informer import Informer, ObjectStore
from kiln_operator.observe import children_from_cache

JOB_LABEL = "kiln.dev/job-name"


def obj(name: str, version: str | None, job: str = "j", kind: str = "Pod", **meta: Any) -> dict[str, Any]:
    metadata = {"name": name, "namespace": "ns", "labels": {JOB_LABEL: job}, **meta}
    if version is not None:
        metadata["resourceVersion"] = version
    return {"kind": kind, "metadata": metadata}


def versions(store: ObjectStore) -> dict[str, str | None]:
    return {o["metadata"]["name"]: o["metadata"].get("resourceVersion") for o in store.group("ns", "j")}


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([("ADDED", "5")], {"p": "5"}),
        ([("ADDED", "5"), ("MODIFIED", "7")], {"p": "7"}),
        ([("offer", "9"), ("MODIFIED", "7")], {"p": "9"}),  # an event older than the operator's write
        ([("MODIFIED", "7"), ("offer", "6")], {"p": "7"}),  # a write's answer older than the watch
        ([("ADDED", "5"), ("DELETED", "8"), ("offer", "6")], {}),  # no resurrection by a late answer
        ([("ADDED", "5"), ("DELETED", "8"), ("ADDED", "10")], {"p": "10"}),  # created again
        ([("offer", "abc")], {}),  # a version that is not an integer is not offered
        ([("ADDED", "abc"), ("MODIFIED", "xyz")], {"p": "xyz"}),  # the watch alone still works
    ],
)
def test_the_store_keeps_the_newest_version_it_has_seen(steps: list[tuple[str, str]], expected: dict[str, str]) -> None:
    store = ObjectStore("kiln.dev/job-name")
    for step, version in steps:
        if step == "offer":
            store.offer(obj("p", version))
        else:
            store.apply_event(step, obj("p", version))
    assert versions(store) == expected


def test_an_object_being_created_is_the_operators_own_until_the_create_returns() -> None:
    store = ObjectStore(JOB_LABEL)
    with store.creating("ns", "p"):
        store.apply_event("ADDED", obj("p", "5"))  # the watch was faster than the create's answer
        assert store.written_by_operator("ns", "p", "5")
        store.offer(obj("p", "5"))
    assert store.written_by_operator("ns", "p", "5")
    assert not store.written_by_operator("ns", "p", "6")  # a later change is somebody else's


def test_two_creates_of_one_object_under_way_end_with_the_second() -> None:
    store = ObjectStore(JOB_LABEL)
    with store.creating("ns", "p"):
        with store.creating("ns", "p"):
            pass
        assert store.written_by_operator("ns", "p", "7")  # the first is still under way
    assert not store.written_by_operator("ns", "p", "7")


def test_a_relabelled_object_moves_between_groups() -> None:
    store = ObjectStore(JOB_LABEL)
    store.apply_event("ADDED", obj("p", "1", job="a"))
    store.apply_event("MODIFIED", obj("p", "2", job="b"))
    assert store.group("ns", "a") == []
    assert [o["metadata"]["name"] for o in store.group("ns", "b")] == ["p"]


def test_replace_drops_what_the_new_list_does_not_hold_and_says_what() -> None:
    store = ObjectStore(JOB_LABEL)
    store.apply_event("ADDED", obj("old", "1"))
    store.apply_event("ADDED", obj("kept", "1"))
    dropped = store.replace([obj("new", "2"), obj("kept", "3")])
    assert versions(store) == {"new": "2", "kept": "3"}
    assert [o["metadata"]["name"] for o in dropped] == ["old"]


class ListOnce:
    """A KubeClient that answers one list and then a watch that ends at once."""

    def __init__(self, informer_box: list[Informer], items: list[dict[str, Any]]) -> None:
        self.informer_box, self.items = informer_box, items

    def request(self, method: str, path: str, params: Any = None) -> dict[str, Any]:
        return {"metadata": {"resourceVersion": "10"}, "items": self.items}

    def stream_lines(self, path: str, params: Any, read_timeout: float, opened: Any = None) -> Any:
        self.informer_box[0].stop()
        return iter(())


def test_a_relist_tells_listeners_what_it_dropped_and_what_it_holds() -> None:
    box: list[Informer] = []
    informer = Informer(ListOnce(box, [obj("head", "9")]), "Pod", "ns", "", JOB_LABEL)  # type: ignore[arg-type]
    box.append(informer)
    informer.apply_event("ADDED", obj("worker", "4"))  # deleted while no watch followed
    heard: list[tuple[str, str]] = []
    informer.listeners.append(lambda event_type, o: heard.append((event_type, o["metadata"]["name"])))
    informer._list_and_watch()
    assert heard == [("DELETED", "worker"), ("ADDED", "head")]


def test_only_the_version_the_operator_wrote_counts_as_its_own() -> None:
    store = ObjectStore(JOB_LABEL)
    store.offer(obj("p", "5"))
    assert store.written_by_operator("ns", "p", "5")
    assert not store.written_by_operator("ns", "p", "6")
    assert not store.written_by_operator("ns", "q", "5")
    store.apply_event("DELETED", obj("p", "9"))
    assert not store.written_by_operator("ns", "p", "5")


def test_children_are_unknown_until_every_informer_has_listed() -> None:
    caches = OperatorCaches(kube=None, namespaces=("ns",))  # type: ignore[arg-type]  (never started)
    assert caches.children("ns", "j") is None
    for informer in caches.informers.values():
        informer._synced.set()
        if informer.kind in CACHED_KINDS:
            informer.apply_event("ADDED", obj(f"j-{informer.kind.lower()}", "1", kind=informer.kind))
    found = caches.children("ns", "j")
    assert found is not None and sorted(kind for kind, _ in found) == sorted(CACHED_KINDS)
    assert caches.children("ns", "other") == []  # synced: absence means none exist


def test_jobs_are_copies_that_a_reconcile_may_change() -> None:
    caches = OperatorCaches(kube=None, namespaces=())  # type: ignore[arg-type]
    caches.offer(obj("j", "3", kind="TrainingJob"))
    assert caches.job("ns", "j") is None  # not listed yet: the API server is asked
    caches.informers[("TrainingJob", None)]._synced.set()
    job = caches.job("ns", "j")
    assert job is not None
    job["metadata"]["name"] = "changed"
    assert caches.job("ns", "j")["metadata"]["name"] == "j"  # type: ignore[index]
    assert caches.job("ns", "missing") is None


def test_cached_children_are_picked_as_the_api_reads_pick_them() -> None:
    cached = [
        ("Pod", obj("j-head", "1", ownerReferences=[{"uid": "u1"}])),
        ("Pod", obj("j-worker-0", "1", ownerReferences=[{"uid": "old"}])),  # an earlier job's leftover
        ("ConfigMap", obj("j-job", "1", kind="ConfigMap")),
        ("ConfigMap", obj("j-something-else", "1", kind="ConfigMap")),  # labelled, but not the job's row
        ("Service", obj("j-head", "1", kind="Service")),
    ]
    from kiln_operator.objects.labels import JobRef

    found = children_from_cache(cached, JobRef("j"), "u1")
    assert sorted(found) == [("ConfigMap", "j-job"), ("Pod", "j-head"), ("Service", "j-head")]


def test_the_cache_keeps_what_reconciles_read_and_drops_the_rest() -> None:
    from kiln_operator.caches import kept_of
    from kiln_operator.pod_state import env_value

    pod = {"kind": "Pod", "apiVersion": "v1",
           "metadata": {"name": "j-head", "labels": {JOB_LABEL: "j"}, "managedFields": [{"manager": "x"}]},
           "spec": {"containers": [{"name": "ray", "image": "i", "env": [{"name": "KILN_JOB", "value": "{}"}]}],
                    "volumes": [{"name": "v"}]},
           "status": {"phase": "Running", "podIP": "10.0.0.1"}}
    kept = kept_of(pod)
    assert env_value(kept, "KILN_JOB") == "{}"
    assert kept["status"] == pod["status"] and kept["metadata"]["labels"] == {JOB_LABEL: "j"}
    assert "managedFields" not in kept["metadata"] and "volumes" not in kept["spec"]
    config_map = {"kind": "ConfigMap", "metadata": {"name": "j-job", "annotations": {"kiln.dev/spec-hash": "h"}},
                  "data": {"job.yaml": "x" * 10_000}}
    assert kept_of(config_map) == {"kind": "ConfigMap", "apiVersion": None, "metadata": config_map["metadata"]}


def test_the_cached_job_drops_kopfs_copy_of_its_spec() -> None:
    from kiln_operator.caches import KOPF_DIFFBASE, job_kept_of

    job = obj("j", "1", kind="TrainingJob", annotations={KOPF_DIFFBASE: "{}", "keep": "x"}, managedFields=[{}])
    job["spec"] = {"a": 1}
    kept = job_kept_of(job)
    assert kept["metadata"]["annotations"] == {"keep": "x"} and "managedFields" not in kept["metadata"]
    assert kept["spec"] == {"a": 1} and job["metadata"]["annotations"][KOPF_DIFFBASE] == "{}"  # the original is untouched


def test_a_list_keeps_newer_writes_and_no_late_event_brings_back_what_it_dropped() -> None:
    store = ObjectStore(JOB_LABEL)
    store.offer(obj("new", "12"))  # written after the list's version: the list cannot hold it
    store.replace([obj("p", "5")], listed_at=10)
    assert versions(store) == {"p": "5", "new": "12"}
    store.offer(obj("gone", "8"))  # deleted before the list at 10, which did not hold it
    store.offer(obj("later", "11"))
    assert versions(store) == {"p": "5", "new": "12", "later": "11"}


