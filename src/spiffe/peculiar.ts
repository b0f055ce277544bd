// @peculiar/x509 resolves its algorithm providers through tsyringe, which needs the Reflect metadata
// polyfill loaded first. Every module imports @peculiar/x509 through this file, so the order holds
// whatever order the importing modules' imports are sorted in.
import 'reflect-metadata';

export * from '@peculiar/x509';
