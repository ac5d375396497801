/**
 * Typed service tokens. tsyringe's tokens are untyped symbols; a `Token<T>` is a
 * symbol that carries the interface it names, so `container.resolve(IHost)`
 * returns an `IHost`. The constant has the interface's name.
 */
import type { InjectionToken } from "tsyringe";

export type Token<T> = symbol & { readonly __of?: T };

export const createToken = <T>(name: string): Token<T> & InjectionToken<T> => Symbol(name);
