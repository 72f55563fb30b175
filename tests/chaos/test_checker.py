"""The checker can fail: synthetic histories with a double execution, a wrong replay, a cross-caller answer,
an unknown answer without a real unknown, an answer not kept, and a crashed gateway are each caught; a
clean history and what the release policy allows are not. A key run again after its holder was killed, or
cut off longer than the lease, is a violation under lock and under detached execution (the key store reports
an abandoned claim instead), named as following a lease that ended when the history shows it; a killed
holder whose key then answers 409 and 410 passes. Run by `make validate` and by every chaos run
(standard library only: python3 -m unittest discover -s tests/chaos -p 'test_*.py')."""

import json
import unittest

import checker


def payment(pid, op, caller="alice", key=None, seq=1):
    return {"id": pid, "sequence": seq,
            "request": {"op": op, "caller": caller, "key": key or f"key-{op}", "amount": 7}}


def answer(gateway, start, pay, status=201, replayed=False):
    body = json.dumps(pay)
    return {"gateway": gateway, "start": start, "end": start + 0.05, "status": status, "replayed": replayed,
            "body": body, "body_sha256": "x"}


def problem(gateway, start, status, kind):
    return {"gateway": gateway, "start": start, "end": start + 0.01, "status": status, "problem": kind,
            "body": json.dumps({"type": f"urn:envoy-idempotency:problem:{kind}"})}


def failed(gateway, start, error="timeout"):
    return {"gateway": gateway, "start": start, "end": start + 2.0, "error": error}


def op(op_id, attempts, caller="alice", route="lock", knob=None, phase="run", key=None, result="ok"):
    return {"op": op_id, "client": 0, "caller": caller, "key": key or f"key-{op_id}", "route": route,
            "path": "/payments", "amount": 7, "knob": knob, "knob_value": None, "phase": phase,
            "attempts": attempts, "result": result}


LEASE_S = 15.0
CONFIG = {"seed": "test", "seconds": 1, "start": 1000.0, "lease_s": LEASE_S}
RUNNING = {"envoy-a": {"status": "running", "crash_lines": []}, "envoy-b": {"status": "running", "crash_lines": []}}


def invariants(history, executions, faults=(), containers=None):
    violations, _, _ = checker.check(history, executions, list(faults), containers or RUNNING, CONFIG)
    return sorted(v.invariant for v in violations)


class Checker(unittest.TestCase):
    def clean(self):
        p1, p2 = payment("pay_1", "o1"), payment("pay_2", "o2", caller="bob")
        history = [
            op("o1", [answer("envoy-a", 1001, p1)]),
            op("o1", [answer("envoy-b", 1100, p1, replayed=True)], phase="final"),
            # a timeout, 409 while it runs, then the hold's end: 410
            op("o2", [failed("envoy-a", 1002), problem("envoy-b", 1004.1, 409, "request-in-progress"),
                      problem("envoy-a", 1010, 410, "outcome-unknown")], caller="bob", result="unknown"),
            op("o2", [problem("envoy-b", 1101, 410, "outcome-unknown")], caller="bob", phase="final",
               result="unknown"),
        ]
        return history, [p1, p2]

    def test_a_clean_history_passes(self):
        history, executions = self.clean()
        self.assertEqual(invariants(history, executions), [])
        text, violations = checker.report(history, executions, [], RUNNING, CONFIG)
        self.assertEqual(violations, [])
        self.assertIn("chaos: 0 violation(s)", text)

    def test_double_execution_under_lock(self):
        history, executions = self.clean()
        executions.append(payment("pay_3", "o1", seq=3))
        self.assertEqual(invariants(history, executions), ["single-execution"])

    def test_release_allows_one_more_per_uncertain_attempt_and_no_more(self):
        p1, p2 = payment("pay_1", "r1"), payment("pay_2", "r1", seq=2)
        history = [op("r1", [failed("envoy-a", 1001, "reset"), answer("envoy-b", 1004, p2)], route="release")]
        violations, _, stats = checker.check(history, [p1, p2], [], RUNNING, CONFIG)
        self.assertEqual(violations, [])
        self.assertEqual(stats["allowed_reexecutions"], 1)
        p3 = payment("pay_3", "r1", seq=3)
        self.assertEqual(invariants(history, [p1, p2, p3]), ["single-execution"])

    def test_wrong_replay(self):
        history, executions = self.clean()
        other = payment("pay_9", "o1", seq=9)  # the right op, but no execution made it
        history[1]["attempts"][0] = answer("envoy-b", 1100, other, replayed=True)
        self.assertEqual(invariants(history, executions), ["answer-is-execution", "answer-kept"])

    def test_cross_caller_answer(self):
        history, executions = self.clean()
        # bob's payment under alice's operation: another caller's answer
        history[1]["attempts"][0] = answer("envoy-b", 1100, executions[1], replayed=True)
        found = invariants(history, executions)
        self.assertIn("own-answer", found)
        violations, _, _ = checker.check(history, executions, [], RUNNING, CONFIG)
        self.assertTrue(any("got the answer of caller bob" in v.message for v in violations))

    def test_unknown_without_a_real_unknown(self):
        p = payment("pay_1", "o3")
        history = [op("o3", [problem("envoy-a", 1001, 410, "outcome-unknown")], result="unknown")]
        self.assertEqual(invariants(history, [p]), ["real-unknown"])
        history = [op("o3", [problem("envoy-a", 1001, 409, "request-in-progress"), answer("envoy-b", 1002, p)])]
        self.assertEqual(invariants(history, [p]), ["real-unknown"])

    def test_a_fault_or_a_knob_makes_an_unknown_real(self):
        p = payment("pay_1", "o3")
        history = [op("o3", [answer("envoy-a", 1001, p, status=201), problem("envoy-a", 1003, 409, "x")])]
        self.assertIn("answer-kept", invariants(history, [p]))
        knobbed = {"gateway": "envoy-a", "start": 1001, "end": 1001.1, "status": 502}
        history = [op("o3", [knobbed, problem("envoy-b", 1002, 410, "outcome-unknown")], knob="reset",
                      result="unknown")]
        self.assertEqual(invariants(history, [p]), [])
        clean_first = {"gateway": "envoy-a", "start": 1001, "end": 1001.1, "status": 400}
        history = [op("o3", [clean_first, problem("envoy-b", 1002, 410, "outcome-unknown")], result="unknown")]
        self.assertEqual(invariants(history, [p]), ["real-unknown"])
        pause = {"kind": "pause", "target": "envoy-a", "start": 1000.5, "end": 1001.05}
        self.assertEqual(invariants(history, [p], faults=[pause]), [])

    def test_answer_not_kept(self):
        history, executions = self.clean()
        history[1]["attempts"][0] = problem("envoy-b", 1100, 410, "outcome-unknown")
        self.assertEqual(invariants(history, executions), ["answer-kept"])

    def test_mismatch_for_a_key_of_one_operation(self):
        history, executions = self.clean()
        history[0]["attempts"].insert(0, problem("envoy-a", 1000.5, 422, "key-reused"))
        self.assertEqual(invariants(history, executions), ["no-false-mismatch"])
        # two operations of one caller on one key: 422 is the right answer to the second
        history.append(op("o4", [problem("envoy-a", 1003, 422, "key-reused")], key="key-o1", result="refused-422"))
        history[0]["attempts"].pop(0)
        self.assertEqual(invariants(history, executions), [])

    def test_execution_nobody_asked_for(self):
        history, executions = self.clean()
        executions.append(payment("pay_7", "nobody"))
        self.assertEqual(invariants(history, executions), ["single-execution"])

    def test_crashed_gateway(self):
        history, executions = self.clean()
        crashed = dict(RUNNING, **{"envoy-b": {"status": "exited", "crash_lines": ["[critical][main] panic"]}})
        self.assertEqual(invariants(history, executions, containers=crashed), ["no-crash", "no-crash"])
        exit_ = {"kind": "unexpected-exit", "target": "envoy-a", "start": 1050, "end": 1050, "detail": "code 139"}
        self.assertEqual(invariants(history, executions, faults=[exit_]), ["no-crash"])

    def test_table_counts_per_fault_kind(self):
        history, executions = self.clean()
        executions.append(payment("pay_3", "o1", seq=3))
        pause = {"kind": "pause", "target": "envoy-a", "start": 1000.5, "end": 1001.5, "detail": ""}
        violations, keys, _ = checker.check(history, executions, [pause], RUNNING, CONFIG)
        rows = {r[0]: r for r in checker.table(keys, [pause], violations, "lock")}
        # (kind, faults, ops, executions, re-executions, ok, unknown, gave up, violations)
        self.assertEqual(rows["pause"][1:5], (1, 1, 2, 1))
        self.assertEqual(rows["pause"][8], 1)
        self.assertEqual(rows["all"][2:4], (2, 3))


def fault(kind, target, start, seconds, applied_after=0.1):
    """A fault as the nemesis logs it."""
    return {"kind": kind, "target": target, "start": start, "applied": start + applied_after,
            "seconds": seconds, "end": start + applied_after + seconds + 0.2, "detail": f"{kind} {seconds} s"}


class GatewayDies(unittest.TestCase):
    """Lease 15 s. Operation k1's first attempt goes to envoy-a at 1001 and executes (pay_1); in the cases that
    fail, the key is executed again (pay_2). A filler operation's payment, made at 1003.5 between them, bounds
    when pay_1 was made (the upstream numbers payments in order)."""

    P1, FILL, P2 = payment("pay_1", "k1", seq=1), payment("pay_f", "f1", seq=2), payment("pay_2", "k1", seq=3)

    def history(self, first, retries, final, route="lock"):
        return [
            op("k1", [first] + retries, result="gave-up", route=route),
            op("k1", final, phase="final", route=route),
            op("f1", [answer("envoy-b", 1003.5, self.FILL)]),
        ]

    def check(self, history, faults, executions=None):
        violations, _, _ = checker.check(history, executions or [self.P1, self.FILL, self.P2], faults, RUNNING,
                                         CONFIG)
        return sorted(v.invariant for v in violations), [v.message for v in violations]

    def killed_holder(self, kill_at=1001.5, taker_at=1030.0, target="envoy-a", route="lock"):
        history = self.history(
            failed("envoy-a", 1001.0, "reset"),
            [problem("envoy-b", 1002 + n, 409, "request-in-progress") for n in range(10)],
            [answer("envoy-b", taker_at, self.P2), answer("envoy-a", taker_at + 0.1, self.P2, replayed=True)],
            route=route)
        return self.check(history, [fault("kill", target, kill_at, 1.0)])

    def test_a_killed_holder_then_409_and_410_passes(self):
        for route in ("lock", "detached"):
            history = self.history(
                failed("envoy-a", 1001.0, "reset"),
                [problem("envoy-b", 1002 + n, 409, "request-in-progress") for n in range(20)]
                + [problem("envoy-b", 1022, 410, "outcome-unknown")],
                [problem("envoy-b", 1030, 410, "outcome-unknown")], route=route)
            found, _ = self.check(history, [fault("kill", "envoy-a", 1001.5, 1.0)], [self.P1, self.FILL])
            self.assertEqual(found, [], route)

    def test_a_second_execution_after_a_killed_holder_is_a_violation_that_names_the_lease(self):
        for route in ("lock", "detached"):
            found, messages = self.killed_holder(route=route)
            self.assertEqual(found, ["single-execution"], route)
            self.assertIn(f"executed 2 times under {route} (1 of the 1 extra after a lease that ended, first after "
                          "kill envoy-a", messages[0])
        text, violations = checker.report(self.history(
            failed("envoy-a", 1001.0, "reset"), [], [answer("envoy-b", 1030.0, self.P2)]),
            [self.P1, self.FILL, self.P2], [fault("kill", "envoy-a", 1001.5, 1.0)], RUNNING, CONFIG)
        self.assertEqual(len(violations), 1)
        self.assertIn("VIOLATION single-execution: op k1", text)
        self.assertIn("route detached (execution: \"detached\"", text)

    def test_without_the_evidence_the_violation_names_no_lease(self):
        for found, messages in (
                self.check(self.history(failed("envoy-a", 1001.0), [], [answer("envoy-b", 1030, self.P2)]), []),
                self.killed_holder(taker_at=1012.0),  # before the lease could end
                self.killed_holder(target="envoy-b")):  # the other gateway
            self.assertEqual(found, ["single-execution"])
            self.assertNotIn("lease", messages[0])

    def test_a_record_the_key_store_never_took_then_two_answers_is_a_violation(self):
        # 201 from envoy-a while Redis is paused past the lease, then another execution through envoy-b.
        history = self.history(answer("envoy-a", 1001.0, self.P1), [],
                               [answer("envoy-b", 1030.0, self.P2),
                                answer("envoy-a", 1030.1, self.P1, replayed=True)])
        found, _ = self.check(history, [fault("pause", "redis", 1001.02, 16.0)])
        self.assertEqual(found, ["answer-kept", "single-execution"])

    def test_the_release_route_may_run_again_after_a_fault(self):
        # Its re-execution is the policy's (the attempt overlapped a fault); the answer that changed is not.
        history = self.history(answer("envoy-a", 1001.0, self.P1), [], [answer("envoy-b", 1030.0, self.P2)],
                               route="release")
        found, _ = self.check(history, [fault("pause", "redis", 1001.02, 16.0)])
        self.assertEqual(found, ["answer-kept"])


if __name__ == "__main__":
    unittest.main()
