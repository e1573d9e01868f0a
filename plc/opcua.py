"""The OPC UA gateway: a client of the PLC's OPC UA server, through `asyncua`.

Instructions go into a ring of slots (docs/plc.md "OPC UA"; one slot = a mailbox with a
handshake): the host writes the free slots and then, as the last node of the same Write
request, `InstructionWriteIndex` (instructions written so far); the PLC copies every slot up to
it and sets `InstructionReadIndex` (instructions taken). The host never has more than `slots`
instructions written and not taken. Sort reports come back the same way in the other
direction (`ReportWriteIndex` / `ReportReadIndex`); chute states are a Byte array indexed by
chute number; both sides count a life variable up. The host subscribes to the PLC's indices,
chute states and life counter, so it reacts to the PLC's data changes, not to a poll.

An asyncio loop in one thread; the engine's ZeroMQ sockets are drained from the same loop.
"""
from __future__ import annotations

import asyncio
import logging
import time

from .log import log_event
from .models import INSTRUCTION_FIELDS, REPORT_FIELDS, NodeModel
from .polled import LinkDown, PolledGateway

log = logging.getLogger("plc.opcua")

__all__ = ["OpcUaGateway", "require_asyncua"]

MASK32 = 0xFFFFFFFF


def require_asyncua():
    """asyncua, or SystemExit with a one-line message saying how to get it."""
    try:
        import asyncua  # noqa: F401
    except ImportError:
        raise SystemExit("sorter plc --protocol opcua needs the asyncua package: "
                         "pip install 'sorter[plc]' (or pip install asyncua)") from None
    return asyncua


class _Handler:
    """Subscription callbacks: keep the latest values, wake the loop."""

    def __init__(self, names: dict, wake: asyncio.Event):
        self.names, self.values, self.wake = names, {}, wake

    def datachange_notification(self, node, val, data):
        self.values[self.names[node.nodeid]] = val
        self.wake.set()


class OpcUaGateway(PolledGateway):
    """Engine decisions -> the PLC's instruction ring; its reports and chute states -> engine."""

    protocol = "opcua"
    thread_name = "plc-opcua-gateway"

    def __init__(self, url: str, decisions: str, feedback: str, model: NodeModel, *,
                 max_age_s: float | None = 0.5, publish_ms: float = 5.0,
                 backoff_initial_s: float = 0.2, backoff_max_s: float = 5.0,
                 timeout_s: float = 4.0, context=None):
        require_asyncua()
        super().__init__(decisions, feedback, max_age_s=max_age_s,
                         backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s,
                         timeout_s=timeout_s, context=context,
                         counters={"connections": 0, "link_downs": 0, "life_timeouts": 0,
                                   "instructions_written": 0, "instruction_writes": 0,
                                   "reports": 0, "chute_states": 0, "malformed": 0})
        self.url = url
        self.model = model
        self.publish_ms = publish_ms

    def peer(self) -> dict:
        return {"url": self.url}

    # -- the loop ----------------------------------------------------------------------------
    async def _main(self) -> None:
        from asyncua import Client
        backoff = self.backoff_initial_s
        try:
            while not self._stop.is_set():
                try:
                    client = Client(self.url, timeout=self.timeout_s)
                    await client.connect()
                except Exception as e:  # noqa: BLE001 - any failure to connect: retry
                    self._drain(time.monotonic())
                    log_event(log, logging.WARNING, "cannot connect to the PLC", url=self.url,
                              error=repr(e))
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.backoff_max_s)
                    continue
                backoff = self.backoff_initial_s
                try:
                    await self._session(client)
                except Exception as e:  # noqa: BLE001 - link down: count, log, reconnect
                    reason = "life_timeout" if isinstance(e, LinkDown) else repr(e)
                    self.counters["link_downs"] += 1
                    log_event(log, logging.WARNING, "link down", url=self.url, reason=reason)
                finally:
                    self.link_up = False
                    self.connected.clear()
                    try:
                        await asyncio.wait_for(client.disconnect(), 2)
                    except Exception:  # noqa: BLE001 - the connection is gone anyway
                        pass
        except BaseException as e:  # noqa: BLE001
            self.error = e
            raise
        finally:
            self.engine.close()

    async def _session(self, client) -> None:
        from asyncua import ua
        m = self.model
        node = client.get_node
        slots = [[node(m.instruction_node(i, f)) for f in INSTRUCTION_FIELDS]
                 for i in range(m.instruction_slots)]
        rslots = [[node(m.report_node(i, f)) for f in REPORT_FIELDS] for i in range(m.report_slots)]
        w_index, r_index = node(m.instruction_write_index), node(m.instruction_read_index)
        rw_index, rr_index = node(m.report_write_index), node(m.report_read_index)
        states, life_host, life_plc = node(m.chute_states), node(m.life_host), node(m.life_plc)
        written, taken, reports_read, plc_life = await client.read_values(
            [w_index, r_index, rr_index, life_plc])
        written, reports_read = int(written), int(reports_read)
        types = (ua.VariantType.UInt64, ua.VariantType.UInt16, ua.VariantType.UInt16,
                 ua.VariantType.Byte, ua.VariantType.UInt32)
        wake = asyncio.Event()
        handler = _Handler({r_index.nodeid: "taken", rw_index.nodeid: "reports",
                            states.nodeid: "states", life_plc.nodeid: "life"}, wake)
        sub = await client.create_subscription(self.publish_ms, handler)
        await sub.subscribe_data_change([r_index, rw_index, states, life_plc])
        self.counters["connections"] += 1
        self.link_up = True
        self.connected.set()
        log_event(log, logging.INFO, "PLC connected", url=self.url, written=written, taken=taken)
        last_states: list[int] | None = None
        host_life = 0
        now = time.monotonic()
        next_life, life_seen, last_plc_life = now, now, plc_life
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(wake.wait(), 0.002)
            except asyncio.TimeoutError:
                pass
            wake.clear()
            now = time.monotonic()
            self._drain(now)
            v = handler.values
            taken = int(v.get("taken", taken))
            # instructions: fill the free slots, the write index last in the same request
            free = m.instruction_slots - ((written - taken) & MASK32)
            if free > 0 and self.backlog:
                with self._lock:
                    batch = self.backlog.take(free, now)
                if batch:
                    nodes, values = [], []
                    for ins in batch:
                        written = (written + 1) & MASK32
                        slot = slots[(written - 1) % m.instruction_slots]
                        vals = (ins.tracking_id, ins.chute, ins.alt_chute, ins.reason, written)
                        nodes += slot
                        values += [ua.Variant(x, t) for x, t in zip(vals, types)]
                    nodes.append(w_index)
                    values.append(ua.Variant(written, ua.VariantType.UInt32))
                    await client.write_values(nodes, values)
                    self.counters["instructions_written"] += len(batch)
                    self.counters["instruction_writes"] += 1
            # sort reports
            rw = int(v.get("reports", reports_read))
            if rw != reports_read:
                n = (rw - reports_read) & MASK32
                if n > m.report_slots:
                    self.counters["malformed"] += 1
                    log_event(log, logging.ERROR, "report index ahead of the ring",
                              write_index=rw, read_index=reports_read, slots=m.report_slots)
                    n = m.report_slots
                idx = [(reports_read + j) % m.report_slots for j in range(n)]
                vals = await client.read_values([x for i in idx for x in rslots[i]])
                confirms = [tuple(int(x) for x in vals[3 * j:3 * j + 3]) for j in range(n)]
                self.engine.send_confirms(confirms)
                self.counters["reports"] += n
                reports_read = rw
                await client.write_values([rr_index], [ua.Variant(rw, ua.VariantType.UInt32)])
            # chute states
            st = v.get("states")
            if st is not None and st is not last_states:
                st = list(st)
                changed = [(c, int(s)) for c, s in enumerate(st) if c > 0 and (
                    last_states is None or c >= len(last_states) or last_states[c] != s)]
                if changed:
                    self.engine.send_chute_states(changed)
                    self.counters["chute_states"] += len(changed)
                last_states = st
                handler.values["states"] = st
            # life both ways
            pl = v.get("life", last_plc_life)
            if pl != last_plc_life:
                last_plc_life, life_seen = pl, now
            elif now - life_seen > m.life_timeout_s:
                self.counters["life_timeouts"] += 1
                raise LinkDown()
            if now >= next_life:
                next_life = now + m.life_interval_s
                host_life = (host_life + 1) & MASK32
                await client.write_values([life_host], [ua.Variant(host_life, ua.VariantType.UInt32)])
