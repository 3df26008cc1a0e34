"""The agent simulator (``backbeat agent-sim``): a fleet of simulated agents on one SDK agent."""

from backbeat.agentsim.model import Behaviour, Report, SimAgent, make_fleet
from backbeat.agentsim.simulator import SimResult, SimSettings, Simulation

__all__ = [
    "Behaviour",
    "Report",
    "SimAgent",
    "SimResult",
    "SimSettings",
    "Simulation",
    "make_fleet",
]
