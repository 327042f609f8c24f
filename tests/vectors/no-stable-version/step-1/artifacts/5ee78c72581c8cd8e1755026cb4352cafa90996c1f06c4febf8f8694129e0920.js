export default 'news@0.1.0';
