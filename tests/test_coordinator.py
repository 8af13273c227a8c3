"""The coordinator in-process: events in, commands out, no sockets, threads or sleeps."""
import pytest

import helper
from mrlib import events
from mrlib.coordinator import FORGET_DEAD_AFTER
from mrlib.scheduler import SPECULATIVE_MIN_SECONDS, TIMEOUT_GRACE
from mrlib.job import GROUP, MAP, REDUCE
from support.sim import HEARTBEAT_LIMIT, Sim

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def sim(tmp_path):
    return Sim(tmp_path)


def worker_states(sim):
    reply = sim.request(helper.cluster_status())
    return {(w["pid"], w["port"]): w["state"] for w in reply["workers"]}


def cancels(sim):
    return [m for _, m in sim.datagrams if m["message_type"] == "cancel_task"]


# --- registration and dispatch ---------------------------------------------------

def test_a_register_is_acknowledged_to_the_address_it_names(sim):
    """A register gets a register_ack naming the worker; once delivered, the worker is ready."""
    sim.handle(events.Register(helper.register("localhost", 7001, 42), "127.0.0.1"))
    worker, ack = sim.acks[-1]
    assert ack == helper.register_ack("localhost", 7001, 42)
    assert worker_states(sim) == {}
    sim.handle(events.AckResult(worker, True))
    assert worker_states(sim) == {(42, 7001): "ready"}


def test_an_ack_never_accepted_leaves_the_worker_out(sim):
    """A worker that takes no register_ack gets no task."""
    sim.handle(events.Register(helper.register("localhost", 7001, 42), "127.0.0.1"))
    sim.handle(events.AckResult(sim.acks[-1][0], False))
    sim.submit()
    assert sim.tasks == [] and sim.job(0).state == "queued"


def test_a_job_waits_for_a_worker_then_its_tasks_are_spread(sim):
    """Queued with no worker; then every map task goes out, least loaded worker first."""
    job_id = sim.submit(mappers=4)
    assert sim.job(job_id).state == "queued" and not sim.tasks
    first = sim.register(101)
    assert len(sim.tasks) == 4  # all to the only worker
    sim.run_to_end(job_id)
    second = sim.register(102)
    sim.submit(mappers=4)
    assert sorted(len(sim.held_by(w)) for w in (first, second)) == [2, 2]


def test_a_job_runs_every_phase_to_success(sim):
    """Map, group, merge, reduce and publish: the outputs are named in the job's snapshot."""
    sim.register(101)
    sim.register(102)
    job = sim.run_to_end(sim.submit(mappers=4, reducers=3))
    assert job.state == "succeeded", job.error
    assert set(job.timings) >= {MAP, GROUP, "merge", REDUCE, "publish"}
    assert [path.rsplit("/", 1)[1] for path in job.outputs] == ["input_0", "input_1", "input_2"]


def test_snapshots_follow_every_change(sim):
    """Clients see a job's progress without anyone publishing it by hand."""
    sim.register(101)
    job_id = sim.submit(mappers=2)
    sim.coordinator.snapshots()
    sim.finish(sim.tasks[0], sim.worker_at(sim.tasks[0].port))
    [snapshot] = sim.coordinator.snapshots()
    assert (snapshot["job_id"], snapshot["tasks_done"], snapshot["tasks_total"]) == (job_id, 1, 2)
    assert sim.coordinator.snapshots() == []


# --- deaths and reassignment ---------------------------------------------------------

@pytest.mark.parametrize("phase", [MAP, GROUP, REDUCE])
def test_a_silent_workers_tasks_go_to_the_other_in_each_phase(sim, phase):
    """A worker that stops heartbeating is declared dead and its tasks of any phase reassigned."""
    first, second = sim.register(101), sim.register(102)
    job_id = sim.submit(mappers=4, reducers=2)
    sim.run_until(lambda: sim.phase(job_id) == phase)
    lost = sim.held_by(first)
    assert lost, f"worker 101 holds nothing in the {phase} phase"
    sim.tasks = [t for t in sim.tasks if t not in lost]  # it never reports them
    sim.advance_clock(HEARTBEAT_LIMIT / 2)
    sim.heartbeat(second)
    sim.advance_clock(HEARTBEAT_LIMIT / 2 + 1)
    assert worker_states(sim)[(101, first.port)] == "dead"
    reassigned = {tuple(t.outputs) for t in sim.held_by(second)}
    assert {tuple(t.outputs) for t in lost} <= reassigned
    assert sim.run_to_end(job_id).state == "succeeded"


def test_a_refused_delivery_declares_the_worker_dead(sim):
    """Unreachable (connection refused) is a death: the task goes elsewhere at once."""
    first, second = sim.register(101), sim.register(102)
    sim.submit(mappers=2)
    task = sim.held_by(first)[0]
    sim.tasks.remove(task)
    sim.handle(events.Unreachable(task.attempt, "refused"))
    assert worker_states(sim)[(101, first.port)] == "dead"
    assert tuple(task.outputs) in {tuple(t.outputs) for t in sim.held_by(second)}


def test_a_worker_heartbeating_again_is_taken_back(sim):
    """Declared dead wrongly, it is ready again; what it still ran is a leftover it is told to stop."""
    first, second = sim.register(101), sim.register(102)
    sim.submit(mappers=2)
    held = sim.held_by(first)[0]
    sim.advance_clock(HEARTBEAT_LIMIT + 1)  # both silent: both dead
    sim.heartbeat(first)
    assert worker_states(sim)[(101, first.port)] != "dead"
    sim.advance_clock(0.5)
    assert helper.task_id(tuple(sorted(held.outputs))) in [m["task_id"] for m in cancels(sim)]


def test_a_long_dead_worker_is_forgotten_and_asked_to_register_if_it_returns(sim):
    """Dead workers holding nothing drop out of cluster_status after a while."""
    gone, staying = sim.register(101), sim.register(102)
    sim.pass_time(HEARTBEAT_LIMIT + 1, silent=[gone])
    assert worker_states(sim)[(101, gone.port)] == "dead"
    sim.pass_time(FORGET_DEAD_AFTER, silent=[gone])
    assert worker_states(sim) == {(102, staying.port): "ready"}
    sim.heartbeat(gone)
    assert [m["message_type"] for _, m in sim.datagrams][-1:] == ["unknown_worker"]


def test_a_dead_worker_holding_a_leftover_is_remembered(sim):
    """Its attempt is still a leftover (not yet forgotten): the record stays."""
    gone = sim.register(101)
    sim.submit(mappers=1, task_timeout=10 * FORGET_DEAD_AFTER)
    sim.advance_clock(HEARTBEAT_LIMIT + 1)
    sim.advance_clock(FORGET_DEAD_AFTER)
    assert (101, gone.port) in worker_states(sim)


def test_a_restarted_worker_on_the_same_port_replaces_the_old_at_once(sim):
    """A new pid registering at a live worker's address: the old one is dead, its tasks move."""
    old = sim.register(101, port=7100)
    sim.submit(mappers=2)
    held = {tuple(t.outputs) for t in sim.held_by(old)}
    sim.tasks.clear()
    new = sim.register(202, port=7100)
    assert worker_states(sim) == {(101, 7100): "dead", (202, 7100): "busy"}
    assert {tuple(t.outputs) for t in sim.held_by(new)} == held


# --- statuses --------------------------------------------------------------------

def test_a_duplicate_finish_counts_once(sim):
    """Two finishes of one task (a late copy) advance the job once."""
    worker = sim.register(101)
    job_id = sim.submit(mappers=2)
    task = sim.tasks[0]
    sim.finish(task, worker)
    sim.finish(task, worker)
    assert sim.job(job_id).done_count == 1 and sim.phase(job_id) == MAP


def test_a_stale_failure_is_ignored(sim):
    """A failure from a worker that does not hold the task counts no attempt."""
    first, second = sim.register(101), sim.register(102)
    sim.submit(mappers=2)
    task = sim.held_by(first)[0]
    sim.report(task, second, helper.FAILED, error="boom")
    assert sim.job(0).tasks[tuple(sorted(task.outputs))].failures == 0


def test_a_status_from_an_ended_job_changes_nothing(sim):
    """A result arriving after its job ended is dropped; the next job is unaffected."""
    worker = sim.register(101)
    first = sim.run_to_end(sim.submit(mappers=2))
    second = sim.submit(mappers=2)
    stale = events.Status(helper.status_files([first.outputs[0]], worker.pid), worker.peer)
    sim.handle(stale)
    assert sim.run_to_end(second).state == "succeeded"


def test_a_late_result_from_a_dead_worker_is_accepted(sim):
    """Outputs in place are outputs: a dead worker's finish completes the task."""
    first, second = sim.register(101), sim.register(102)
    job_id = sim.submit(mappers=2)
    task = sim.held_by(first)[0]
    sim.handle(events.Unreachable(task.attempt, "refused"))
    sim.finish(task, first)
    assert sim.job(job_id).done_count == 1


def test_failures_retry_elsewhere_then_fail_the_job(sim):
    """A failed attempt goes to another worker; max_attempts failures fail the job."""
    first, second = sim.register(101), sim.register(102)
    job_id = sim.submit(mappers=1, reducers=1, max_attempts=3)
    for attempt in range(3):
        [task] = sim.tasks
        holder = sim.worker_at(task.port)
        if attempt == 1:
            assert holder is not first_holder, "a retry avoids the worker it failed on"
        first_holder = holder
        sim.report(task, holder, helper.FAILED, error="boom")
    job = sim.job(job_id)
    assert job.state == "failed" and "attempt 3 of 3" in job.error


def test_an_unfit_worker_is_set_aside_without_counting_an_attempt(sim):
    """A worker that cannot see the job's files is set aside; the task runs on another."""
    first, second = sim.register(101), sim.register(102)
    job_id = sim.submit(mappers=1, reducers=1)
    [task] = sim.tasks
    holder = sim.worker_at(task.port)
    other = second if holder is first else first
    sim.report(task, holder, helper.FAILED, error="cannot see var", unfit=True)
    assert worker_states(sim)[(holder.pid, holder.port)] == "unfit"
    assert sim.job(job_id).tasks[tuple(sorted(task.outputs))].failures == 0
    assert [t.port for t in sim.tasks] == [other.port]
    sim.heartbeat(holder)
    assert worker_states(sim)[(holder.pid, holder.port)] == "unfit"


def test_a_task_over_its_time_limit_is_retried_and_its_copy_stopped(sim):
    """No result within the task timeout: a failed attempt, a retry, and a cancel_task."""
    worker = sim.register(101)
    job_id = sim.submit(mappers=1, reducers=1, task_timeout=5)
    [task] = sim.tasks
    sim.tasks.clear()
    sim.pass_time(5 + TIMEOUT_GRACE + 1)
    assert sim.job(job_id).tasks[tuple(sorted(task.outputs))].failures == 1
    assert len(sim.tasks) == 1, "the task is sent again"
    assert cancels(sim), "the overrunning copy is told to stop"


def test_time_waiting_in_a_workers_queue_does_not_count_against_the_limit(sim):
    """A worker running its tasks in turn, each within the limit, fails none of them."""
    worker = sim.register(101)
    job_id = sim.submit(mappers=4, reducers=1, task_timeout=5)
    queue = list(sim.tasks)
    assert len(queue) == 4
    for task in queue:  # all delivered at once; each takes 4 s of the 5 s limit
        sim.pass_time(4)
        sim.finish(task, worker)
    assert all(t.failures == 0 for t in sim.job(job_id).tasks.values())
    assert not cancels(sim)


def test_a_hung_task_behind_finished_ones_still_times_out(sim):
    """The clock runs from the worker's last result: a task that hangs after it is caught."""
    worker = sim.register(101)
    job_id = sim.submit(mappers=2, reducers=1, task_timeout=5)
    first, hung = sim.tasks
    sim.pass_time(3)
    sim.finish(first, worker)
    sim.pass_time(5 + TIMEOUT_GRACE + 1)
    assert sim.job(job_id).tasks[tuple(sorted(hung.outputs))].failures == 1


def test_a_task_never_accepted_moves_to_another_worker(sim):
    """A message not delivered within the limit is revoked and reassigned, not failed."""
    first, second = sim.register(101), sim.register(102)
    sim.undeliverable.add(first.port)
    job_id = sim.submit(mappers=2, reducers=1, task_timeout=5)
    stuck = sim.held_by(first)
    for task in sim.held_by(second):
        sim.finish(task, second)
    sim.pass_time(5 + TIMEOUT_GRACE + 1)
    assert stuck and {t.attempt for t in stuck} <= sim.revoked
    assert {tuple(t.outputs) for t in stuck} <= {tuple(t.outputs) for t in sim.held_by(second)}
    assert all(t.failures == 0 for t in sim.job(job_id).tasks.values())
    assert not first.dead


# --- speculation and leftovers ------------------------------------------------------------

def test_a_straggler_gets_a_backup_and_the_loser_is_stopped(sim):
    """Speculative job: an idle worker runs a copy of a slow task; the first result wins."""
    fast, slow = sim.register(101), sim.register(102)
    job_id = sim.submit(mappers=4, reducers=1, speculative=True)
    straggler = sim.held_by(slow)[-1]
    for task in [t for t in sim.tasks if t is not straggler]:
        sim.finish(task, sim.worker_at(task.port))
    sim.pass_time(SPECULATIVE_MIN_SECONDS * 10)
    backups = [t for t in sim.held_by(fast) if t.outputs == straggler.outputs]
    assert backups, "no backup was started"
    sim.finish(backups[0], fast)
    assert sim.phase(job_id) != MAP
    sim.pass_time(0.5)
    assert helper.task_id(tuple(sorted(straggler.outputs))) in [m["task_id"] for m in cancels(sim)]


def test_no_backups_unless_the_job_asks(sim):
    """The spec forbids duplicate work: without speculative, a slow task gets no copy."""
    fast, slow = sim.register(101), sim.register(102)
    sim.submit(mappers=4, reducers=1)
    straggler = sim.held_by(slow)[-1]
    for task in [t for t in sim.tasks if t is not straggler]:
        sim.finish(task, sim.worker_at(task.port))
    sim.advance_clock(SPECULATIVE_MIN_SECONDS * 10)
    assert sim.held_by(fast) == []


def test_a_leftover_keeps_its_worker_busy_until_reported(sim):
    """A losing copy still occupies its worker, so no new task piles on it."""
    fast, slow = sim.register(101), sim.register(102)
    sim.submit(mappers=4, reducers=1, speculative=True)
    straggler = sim.held_by(slow)[-1]
    for task in [t for t in sim.tasks if t is not straggler]:
        sim.finish(task, sim.worker_at(task.port))
    sim.advance_clock(SPECULATIVE_MIN_SECONDS * 10)
    sim.finish(sim.held_by(fast)[0], fast)
    assert worker_states(sim)[(102, slow.port)] == "busy"
    sim.report(straggler, slow, helper.FAILED, error="killed")
    assert worker_states(sim)[(102, slow.port)] != "busy" or sim.held_by(slow)


# --- cancel ------------------------------------------------------------------------

def test_cancel_a_running_job_stops_its_attempts_and_starts_the_next(sim):
    """cancel_job ends the job, tells our workers to stop its tasks, and runs the next job."""
    worker = sim.register(101)
    first = sim.submit(mappers=2)
    second = sim.submit(mappers=2)
    running = list(sim.tasks)
    sim.tasks.clear()
    reply = sim.request(helper.cancel_job(first))
    assert reply["state"] == "cancelled"
    assert sim.job(second).state == "running"
    sim.advance_clock(0.5)
    stopped = {m["task_id"] for m in cancels(sim)}
    assert {helper.task_id(tuple(sorted(t.outputs))) for t in running} <= stopped
    for task in running:  # our worker reports them stopped: they no longer keep it busy
        sim.report(task, worker, helper.FAILED, error="cancelled")
    assert sim.run_to_end(second).state == "succeeded"


def test_cancel_a_queued_job(sim):
    """A queued job cancelled never starts."""
    sim.register(101)
    first, second = sim.submit(), sim.submit()
    assert sim.request(helper.cancel_job(second))["state"] == "cancelled"
    sim.run_to_end(first)
    assert sim.job(second).state == "cancelled" and sim.coordinator.current is None


def test_cancel_of_an_unknown_job_says_so(sim):
    assert sim.request(helper.cancel_job(7))["state"] == "unknown"


# --- identity ------------------------------------------------------------------------

def test_an_impostor_register_does_not_hide_the_live_worker(sim):
    """Same pid, same host, another port while the worker lives: ignored."""
    worker = sim.register(101, port=7100)
    assert sim.register(101, port=7200) is None
    assert worker_states(sim) == {(101, 7100): "ready"}
    sim.submit(mappers=2)
    assert {t.port for t in sim.tasks} == {worker.port}


def test_two_workers_with_one_pid_on_two_hosts_both_work(sim):
    """A worker is its pid and address: same pid from two hosts are two workers."""
    first = sim.register(1, peer="10.0.0.2", host="10.0.0.2", port=7100)
    second = sim.register(1, peer="10.0.0.3", host="10.0.0.3", port=7100)
    assert first is not second and len(sim.coordinator.workers.live()) == 2
    job_id = sim.submit(mappers=4)
    assert sim.held_by(first) or sim.held_by(second)
    hosts = {sim.coordinator.attempts.get(t.attempt).worker.host for t in sim.tasks}
    assert hosts == {"10.0.0.2", "10.0.0.3"}
    # One goes silent: only it dies, and its tasks move to the other.
    sim.advance_clock(HEARTBEAT_LIMIT / 2)
    sim.heartbeat(second)
    sim.advance_clock(HEARTBEAT_LIMIT / 2 + 1)
    assert first.dead and not second.dead
    for task in list(sim.tasks):  # statuses are told apart by where they come from
        owner = sim.coordinator.attempts.get(task.attempt).worker
        sim.finish(task, owner)
    assert sim.run_to_end(job_id).state == "succeeded"


@pytest.mark.parametrize("instance", [None, "3f2a"])
def test_a_repeated_register_of_the_same_process_keeps_its_tasks(sim, instance):
    """A repeated register (its ack was slow) is acknowledged again, nothing reassigned."""
    worker = sim.register(101, port=7100, instance=instance)
    sim.submit(mappers=2)
    held = list(sim.tasks)
    sim.acks.clear()
    sim.handle(events.Register(helper.register("localhost", 7100, 101, instance), "127.0.0.1"))
    assert sim.acks and sim.acks[-1][0] is worker
    assert sim.tasks == held and not sim.revoked


def test_a_new_process_with_the_same_pid_and_address_is_a_restart(sim):
    """Pid 1 of a container restarted at once: its old self's tasks are sent again."""
    old = sim.register(101, port=7100, instance="aaaa")
    sim.submit(mappers=2, reducers=1)
    assert len(sim.held_by(old)) == 2
    sim.tasks.clear()  # the old process is gone with them
    new = sim.register(101, port=7100, instance="bbbb")
    assert new is not old and old.dead and not new.dead
    assert len(sim.held_by(new)) == 2, "its tasks went out again"


def test_an_unknown_worker_is_asked_to_register_now_and_then(sim):
    """Heartbeats of a worker this master does not know: unknown_worker, rate-limited."""
    sender = ("127.0.0.1", 50000)
    for _ in range(5):
        sim.handle(events.Heartbeat(77, sender))
    asked = [m for a, m in sim.datagrams if m["message_type"] == "unknown_worker"]
    assert asked == [helper.unknown_worker(77)]
    sim.now += 3 * helper.HEARTBEAT_INTERVAL
    sim.handle(events.Heartbeat(77, sender))
    assert len([m for a, m in sim.datagrams if m["message_type"] == "unknown_worker"]) == 2


def test_shutdown_names_every_worker(sim):
    sim.register(101, port=7100)
    sim.register(102, port=7200)
    sim.handle(events.Shutdown())
    assert sorted(sim.stopped) == [("localhost", 7100), ("localhost", 7200)]


def test_a_register_from_another_host_cannot_replace_a_live_worker(sim):
    """A register naming a live worker's host:port from another IP leaves that worker alone."""
    worker = sim.register(101, port=7100)
    sim.submit(mappers=2)
    held = list(sim.tasks)
    sim.handle(events.Register(helper.register("localhost", 7100, 999), "10.9.9.9"))
    assert not worker.dead and sim.tasks == held and not sim.revoked


def test_a_status_with_a_workers_pid_from_elsewhere_is_not_its(sim):
    """A failure forged from another IP with a live worker's pid counts no attempt."""
    worker = sim.register(101)
    sim.submit(mappers=1, reducers=1)
    [task] = sim.tasks
    sim.report(task, worker, helper.FAILED, peer="10.9.9.9", error="forged")
    assert sim.job(0).tasks[tuple(sorted(task.outputs))].failures == 0


def test_an_unfit_worker_keeps_no_leftover(sim):
    """The attempt an unfit worker refused is over: no cancel_task for it, no load."""
    first, second = sim.register(101), sim.register(102)
    sim.submit(mappers=1, reducers=1)
    [task] = sim.tasks
    holder = sim.worker_at(task.port)
    sim.report(task, holder, helper.FAILED, error="cannot see var", unfit=True)
    assert sim.coordinator.attempts.load(holder) == 0


def sent_again_beside_its_leftover(sim):
    """A one-worker job's map task timed out: (worker, task, the leftover's message,
    the new attempt's message), both held by the same worker."""
    worker = sim.register(101)
    job_id = sim.submit(mappers=1, reducers=1, task_timeout=5)
    [old] = sim.tasks
    sim.tasks.clear()
    sim.pass_time(5 + TIMEOUT_GRACE + 1)  # timed out: a leftover, and sent again
    [new] = sim.tasks
    return worker, sim.job(job_id).tasks[tuple(sorted(new.outputs))], old, new


def test_a_stopped_leftovers_failure_is_not_charged_to_a_new_attempt(sim):
    """A worker reporting the failure of a copy it was told to stop: the new attempt still counts."""
    worker, task, old, new = sent_again_beside_its_leftover(sim)
    sim.report(old, worker, helper.FAILED, error="cancelled by the master")
    assert task.failures == 1 and sim.coordinator.attempts.counting(task)


def test_a_leftovers_finish_is_its_own_and_the_new_attempt_is_stopped(sim):
    """A worker holds a leftover and, sent again, a new attempt of the same task: the
    leftover's finish, naming its attempt_id, completes the task as a late result, and
    the new attempt (not taken for the one that finished) is told to stop."""
    worker, task, old, new = sent_again_beside_its_leftover(sim)
    for path in old.outputs:
        open(path, "wb").close()
    sim.report(old, worker, attempt_id=old.message["attempt_id"])
    assert task.done
    sim.datagrams.clear()
    sim.advance_clock(0.5)
    assert {m.get("attempt_id") for m in cancels(sim)} == {new.message["attempt_id"]}


def test_a_new_attempts_failure_is_not_taken_for_its_leftovers(sim):
    """The new attempt's failure, naming its attempt_id, counts as its own, and the
    leftover is still told to stop."""
    worker, task, old, new = sent_again_beside_its_leftover(sim)
    failures = task.failures
    sim.report(new, worker, helper.FAILED, error="boom", attempt_id=new.message["attempt_id"])
    assert task.failures == failures + 1
    sim.datagrams.clear()
    sim.advance_clock(0.5)
    assert old.message["attempt_id"] in {m.get("attempt_id") for m in cancels(sim)}


def test_a_failure_that_was_recovered_is_not_given_as_the_cause(sim):
    """The job's "failure" names only the attempt that ended it: none for a cancel."""
    worker = sim.register(101)
    job_id = sim.submit(mappers=1, reducers=1, max_attempts=3)
    [task] = sim.tasks
    sim.report(task, worker, helper.FAILED, error="boom")  # retried
    sim.request(helper.cancel_job(job_id))
    assert sim.job(job_id).snapshot()["failure"] is None


def test_the_cause_of_a_failed_job_is_its_last_attempt(sim):
    worker = sim.register(101)
    job_id = sim.submit(mappers=1, reducers=1, max_attempts=2)
    for _ in range(2):
        [task] = sim.tasks
        sim.report(task, worker, helper.FAILED, error="boom", exit_code=3)
    failure = sim.job(job_id).snapshot()["failure"]
    assert (failure["attempt"], failure["failures"], failure["exit_code"]) == (2, 2, 3)
