"""Patient anatomy: CT + TotalSegmentator labels as patient models in one LPS frame.

Public entry points are imported lazily so that ``import sonogym.anatomy`` stays cheap.
"""

from __future__ import annotations

__all__ = ["Patient", "Vertebra", "ScrewTrajectory", "TissueTable", "load_patient", "list_patients"]


def __getattr__(name: str):
    if name in ("Patient", "Vertebra", "ScrewTrajectory"):
        from sonogym.anatomy import patient

        return getattr(patient, name)
    if name == "TissueTable":
        from sonogym.anatomy.tissues import TissueTable

        return TissueTable
    if name in ("load_patient", "list_patients"):
        from sonogym.anatomy import catalog

        return getattr(catalog, name)
    raise AttributeError(f"module 'sonogym.anatomy' has no attribute {name!r}")
