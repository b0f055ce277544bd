export * from './evaluate.js';
export * from './learn.js';
export * from './profile.js';
