/**
 * The command's work as functions: check a stack file, or run it and get the
 * summary, the recorder (for the trace and the report) and the exit status.
 * Each run composes a fresh host in its own child container.
 */
import { container as rootContainer } from "tsyringe";
import { createHost } from "../host/host.js";
import { runScenario, type RunOptions } from "./scenario-runner.js";
import type { RunRecorder } from "./run-recorder.js";
import { composeOn, createStackHost, loadStackPlugins, resolveScenario, type Composition } from "./stack-composer.js";
import { loadStack, type Stack } from "./stack-loader.js";
import { buildSummary, exitStatusOf, type Summary } from "./summary.js";
import type { ScenarioDefinition } from "./scenario-api.js";

export interface CheckResult {
  readonly stack: Stack;
  readonly scenario: ScenarioDefinition;
  readonly params: Record<string, unknown>;
  readonly composition: Composition;
}

/** What the command line may override in a stack file. */
export interface StackOverrides {
  readonly seed?: number;
  /** Another scenario, with its default parameters. */
  readonly scenario?: string;
}

export function applyOverrides(stack: Stack, o: StackOverrides = {}): Stack {
  return {
    ...stack,
    ...(o.seed === undefined ? {} : { seed: o.seed }),
    ...(o.scenario === undefined ? {} : { scenario: { name: o.scenario, params: {} } }),
  };
}

/** Validates a stack without running it; throws StackError. */
export async function checkStack(text: string, source: string, overrides: StackOverrides = {}): Promise<CheckResult> {
  const stack = applyOverrides(loadStack(text, source), overrides);
  const plugins = await loadStackPlugins(stack);
  const scope = rootContainer.createChildContainer();
  // The stack's host, unfragmented: the plugins are composed on it and the vendors asked for their types; no VM boots.
  const composition = composeOn(stack, plugins, createHost({ ramBytes: stack.hostRamBytes, seed: stack.seed }, scope), scope);
  const { definition, params } = resolveScenario(stack, composition);
  return { stack, scenario: definition, params, composition };
}

export interface RunReport {
  readonly summary: Summary;
  readonly recorder: RunRecorder;
  readonly exitStatus: number;
}

/** Checks, composes and runs a stack; throws StackError when the file is invalid (nothing runs then). */
export async function runStack(text: string, source: string, options: RunOptions & { readonly overrides?: StackOverrides } = {}): Promise<RunReport> {
  const stack = applyOverrides(loadStack(text, source), options.overrides);
  const plugins = await loadStackPlugins(stack);
  const scope = rootContainer.createChildContainer();
  const composition = composeOn(stack, plugins, createStackHost(stack, scope), scope);
  const { definition, params } = resolveScenario(stack, composition);
  const outcome = await runScenario(stack, composition, definition, params, options);
  const summary = buildSummary(stack, definition.name, params, outcome);
  return { summary, recorder: outcome.recorder, exitStatus: exitStatusOf(summary) };
}
