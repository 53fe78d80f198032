"""The softphone: a scripted caller for the agent service (demo, tests, load generation).

It opens AgentSessionService.Converse like the bridge does, streams caller audio at real-time pace
(silence between lines, as a phone line would), records both sides, prints the live transcript and a
per-turn latency table.
"""
