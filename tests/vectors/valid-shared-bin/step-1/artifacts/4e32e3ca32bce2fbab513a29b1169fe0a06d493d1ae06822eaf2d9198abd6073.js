export default 'profile@3.0.0';
