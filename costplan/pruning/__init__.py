"""The embedded pruner: masks, schedules, compaction and saving; reads the prunable structure and a Plan, never the planner."""
